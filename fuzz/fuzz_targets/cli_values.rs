//! The CLI's value parsers (`splitter weight`, `splitter rollout`): any
//! string gives a value in range or an error that quotes it; never a panic,
//! never an out-of-range value; a value printed back parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use splitter_model::rollout::{human_ms, INTERVAL_MS, MAX_P99_MS, MAX_WAIT_MS};
use splitter_user::cli;

fuzz_target!(|s: &str| {
    if let Ok(d) = cli::parse_duration(s) {
        // humantime's own format parses back to the same duration.
        let printed = humantime::format_duration(d).to_string();
        assert_eq!(cli::parse_duration(&printed), Ok(d), "{s:?} → {printed:?}");
    }
    for (parse, range) in [
        (cli::parse_interval as fn(&str) -> Result<std::time::Duration, String>, INTERVAL_MS),
        (cli::parse_max_p99, MAX_P99_MS),
        (cli::parse_max_wait, MAX_WAIT_MS),
    ] {
        match parse(s) {
            Ok(d) => {
                let ms = u64::try_from(d.as_millis()).expect("in range, so it fits");
                assert!(range.contains(&ms), "{s:?} gave {ms} ms, outside {range:?}");
                assert_eq!(u128::from(ms) * 1_000_000, d.as_nanos(), "{s:?}: not whole milliseconds");
                assert_eq!(parse(&human_ms(ms)), Ok(d), "{s:?} printed as {:?}", human_ms(ms));
            }
            Err(e) => assert!(!e.is_empty()),
        }
    }
    if let Ok(r) = cli::parse_rate(s) {
        assert!((0.0..=1.0).contains(&r), "rate {s:?} gave {r}");
    }
    if let Ok(p) = cli::parse_percent(s) {
        assert!((0.01..=100.0).contains(&p), "percent {s:?} gave {p}");
    }
    match cli::parse_weight(s) {
        Ok((name, w)) => {
            assert!(!name.is_empty());
            assert_eq!(cli::parse_weight(&format!("{name}={w}")), Ok((name.clone(), w)), "{s:?}");
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
