//! A Prometheus client for one instant query at a time (`GET
//! /api/v1/query`), bounded in time and size, and the reading of its
//! answer: one number, or why there is none.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;
use splitter_model::analysis::Prometheus;

use super::http::Outbound;

/// The largest answer read (a single value is a few hundred bytes).
const MAX_ANSWER: usize = 1 << 20;
/// The largest bearer token file read.
const MAX_TOKEN: u64 = 16 << 10;

pub struct Client {
    http: Outbound,
    base: String,
    timeout: Duration,
    token_file: Option<std::path::PathBuf>,
}

impl Client {
    /// A client for `p`; the error says why its CA cannot be used.
    pub fn new(p: &Prometheus) -> Result<Client, String> {
        Ok(Client {
            http: Outbound::new(&p.url, p.ca.as_deref()).map_err(|e| format!("analysis.prometheus.{e}"))?,
            base: p.url.trim_end_matches('/').to_owned(),
            timeout: p.timeout,
            token_file: p.bearer_token_file.clone(),
        })
    }

    /// The value of `promql` now: a scalar, or a vector of one sample.
    pub async fn value(&self, promql: &str) -> Result<f64, String> {
        let uri = format!("{}/api/v1/query?query={}", self.base, utf8_percent_encode(promql, NON_ALPHANUMERIC));
        let mut req = http::Request::get(uri).header(http::header::ACCEPT, "application/json");
        if let Some(path) = &self.token_file {
            req = req.header(http::header::AUTHORIZATION, bearer(path)?);
        }
        let req = req.body(Full::new(Bytes::new())).map_err(|e| format!("the query's URL: {e}"))?;
        let reply = self.http.send(&self.base, req, self.timeout, MAX_ANSWER).await?;
        parse(reply.status, &reply.body)
    }
}

/// `Bearer TOKEN` from the file at `path` (read at each query: a rotated
/// token is used at once); the error names the file, never the token.
fn bearer(path: &std::path::Path) -> Result<http::HeaderValue, String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN).read_to_string(&mut text))
        .map_err(|e| format!("analysis.prometheus.bearer_token_file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("analysis.prometheus.bearer_token_file {} is empty", path.display()));
    }
    let mut value = http::HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
        format!(
            "analysis.prometheus.bearer_token_file {}: the token has characters a header cannot hold",
            path.display()
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum Data {
    Scalar((f64, String)),
    Vector(Vec<Sample>),
    // Read only to be refused: a range query's or a string's result.
    Matrix(#[allow(dead_code)] serde::de::IgnoredAny),
    String(#[allow(dead_code)] serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct Sample {
    value: (f64, String),
}

/// One number from an answer of `/api/v1/query` with HTTP `status`.
pub fn parse(status: u16, body: &[u8]) -> Result<f64, String> {
    let answer: Answer =
        serde_json::from_slice(body).map_err(|e| format!("HTTP {status}, not a Prometheus answer ({e})"))?;
    if answer.status != "success" {
        return Err(format!("Prometheus refused the query: {}", answer.error.unwrap_or(answer.status)));
    }
    let number = |s: &str| s.parse::<f64>().map_err(|_| format!("the value {s:?} is not a number"));
    match answer.data {
        Some(Data::Scalar((_, v))) => number(&v),
        Some(Data::Vector(samples)) => match samples.as_slice() {
            [] => Err("the query returned no series (no data yet, or a label that matches nothing)".into()),
            [one] => number(&one.value.1),
            many => Err(format!("the query returned {} series: aggregate it to one (sum, avg...)", many.len())),
        },
        Some(Data::Matrix(_) | Data::String(_)) => Err("the query must give a scalar or an instant vector".into()),
        None => Err("the answer has no data".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::{bearer, parse};

    #[test]
    fn the_bearer_token_is_read_trimmed_and_marked_sensitive_and_errors_name_the_file_not_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret-token-value\n").unwrap();
        let v = bearer(&path).unwrap();
        assert_eq!(v.to_str().unwrap(), "Bearer s3cret-token-value");
        assert!(v.is_sensitive(), "kept out of hyper's debug output");
        std::fs::write(&path, "  \n").unwrap();
        assert!(bearer(&path).unwrap_err().ends_with("is empty"));
        std::fs::write(&path, "bad\u{1}token").unwrap();
        let e = bearer(&path).unwrap_err();
        assert!(e.contains("characters a header cannot hold") && !e.contains("bad"), "{e}");
        let e = bearer(&dir.path().join("missing")).unwrap_err();
        assert!(e.starts_with("analysis.prometheus.bearer_token_file ") && e.contains("missing"), "{e}");
    }

    #[test]
    fn answers_give_one_number_or_say_why_not() {
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"version":"green"},"value":[1700000000.5,"0.035"]}]}}"#;
        assert_eq!(parse(200, vector), Ok(0.035));
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.5,"2"]}}"#;
        assert_eq!(parse(200, scalar), Ok(2.0));
        let nan = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#;
        assert!(parse(200, nan).unwrap().is_nan(), "NaN is a value; the judge calls it inconclusive");
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(parse(200, empty).unwrap_err().contains("no series"));
        let two = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"1"]},{"metric":{},"value":[1,"2"]}]}}"#;
        assert!(parse(200, two).unwrap_err().contains("2 series"));
        let bad = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#;
        assert!(parse(400, bad).unwrap_err().contains("parse error at char 5"));
        assert!(parse(502, b"<html>bad gateway</html>").unwrap_err().starts_with("HTTP 502, not a Prometheus answer"));
    }
}
