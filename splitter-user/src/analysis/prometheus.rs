//! A Prometheus client for one instant query at a time (`GET
//! /api/v1/query`), bounded in time and size, and the reading of its
//! answer: one number, or why there is none.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client as HttpClient},
    rt::TokioExecutor,
};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;
use splitter_model::analysis::Prometheus;

/// The largest answer read (a single value is a few hundred bytes).
const MAX_ANSWER: usize = 1 << 20;

pub struct Client {
    http: HttpClient<HttpConnector, Empty<Bytes>>,
    base: String,
    timeout: Duration,
}

impl Client {
    pub fn new(p: &Prometheus) -> Client {
        Client {
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
            base: p.url.trim_end_matches('/').to_owned(),
            timeout: p.timeout,
        }
    }

    /// The value of `promql` now: a scalar, or a vector of one sample.
    pub async fn value(&self, promql: &str) -> Result<f64, String> {
        let uri = format!("{}/api/v1/query?query={}", self.base, utf8_percent_encode(promql, NON_ALPHANUMERIC));
        let req = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| format!("the query's URL: {e}"))?;
        let work = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| format!("{}: {}", self.base, crate::l7::upstream::describe(&e)))?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("{}: reading the answer: {e}", self.base))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| format!("{}: no answer in {:?}", self.base, self.timeout))??;
        parse(status, &body)
    }
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
    use super::parse;

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
