//! What a scenario prints: a human table, then exactly one line of JSON
//! with the same figures (what CI and scripts parse).

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// The figures of one scenario, in the order they were added.
pub struct Report {
    scenario: &'static str,
    fields: Vec<(String, Value)>,
}

impl Report {
    pub fn new(scenario: &'static str) -> Report {
        Report {
            scenario,
            fields: Vec::new(),
        }
    }

    /// Adds a figure; floats are rounded to what is worth reading.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<Value>) -> &mut Report {
        let value = match value.into() {
            Value::Number(n) if n.is_f64() => {
                let f = n.as_f64().unwrap_or(0.0);
                let rounded = if f.abs() >= 100.0 {
                    f.round()
                } else {
                    (f * 1000.0).round() / 1000.0
                };
                json!(rounded)
            }
            other => other,
        };
        self.fields.push((key.into(), value));
        self
    }

    /// Adds `PREFIX_p50_ms`, `_p99_ms`, `_max_ms` and `_count` of a
    /// microsecond histogram.
    pub fn latency(&mut self, prefix: &str, histogram: &Histogram<u64>) -> &mut Report {
        let ms = |us: u64| us as f64 / 1000.0;
        self.set(format!("{prefix}_count"), histogram.len());
        self.set(
            format!("{prefix}_p50_ms"),
            ms(histogram.value_at_quantile(0.50)),
        );
        self.set(
            format!("{prefix}_p99_ms"),
            ms(histogram.value_at_quantile(0.99)),
        );
        self.set(format!("{prefix}_max_ms"), ms(histogram.max()));
        self
    }

    /// Prints the table and the JSON line to stdout.
    pub fn print(&self) {
        let width = self.fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        println!("== chat-bench {} ==", self.scenario);
        for (key, value) in &self.fields {
            let shown = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("  {key:<width$}  {shown}");
        }
        let mut object = Map::new();
        object.insert("scenario".into(), json!(self.scenario));
        for (key, value) in &self.fields {
            object.insert(key.clone(), value.clone());
        }
        println!("{}", Value::Object(object));
    }
}
