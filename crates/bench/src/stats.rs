//! Distributions of samples: nearest-rank percentiles, as every figure in the reports uses.

use serde_json::{Value, json};

/// Percentiles of a set of samples (milliseconds, unless said otherwise).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Distribution {
    pub(crate) count: usize,
    pub(crate) min: f64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
}

impl Distribution {
    /// The distribution of `samples`, or `None` when there are none.
    pub(crate) fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        // Nearest rank: the smallest sample with at least p % of the samples at or below it.
        let rank = |p: f64| {
            let index = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            sorted[index.clamp(1, sorted.len()) - 1]
        };
        Some(Self {
            count: sorted.len(),
            min: sorted[0],
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: sorted[sorted.len() - 1],
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        })
    }

    /// `p50 / p99 / max` rounded, for the table.
    pub(crate) fn brief(&self, unit: &str) -> String {
        format!(
            "{} / {} / {} {unit}",
            round(self.p50),
            round(self.p99),
            round(self.max)
        )
    }

    pub(crate) fn to_json(self) -> Value {
        json!({
            "count": self.count,
            "min": round(self.min),
            "p50": round(self.p50),
            "p90": round(self.p90),
            "p99": round(self.p99),
            "max": round(self.max),
            "mean": round(self.mean),
        })
    }
}

/// The JSON of an optional distribution (`null` without samples).
pub(crate) fn json_of(distribution: Option<Distribution>) -> Value {
    distribution.map_or(Value::Null, Distribution::to_json)
}

/// Rounds to one decimal for reports; whole numbers above 100.
pub(crate) fn round(value: f64) -> f64 {
    if value.abs() >= 100.0 {
        value.round()
    } else {
        (value * 10.0).round() / 10.0
    }
}

#[cfg(test)]
mod tests {
    use super::Distribution;

    #[test]
    fn percentiles_are_nearest_rank_and_an_empty_set_has_none() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let d = Distribution::of(&samples).expect("samples");
        assert_eq!((d.count, d.min, d.max), (100, 1.0, 100.0));
        assert_eq!((d.p50, d.p90, d.p99), (50.0, 90.0, 99.0));
        assert!((d.mean - 50.5).abs() < 1e-9);
        let one = Distribution::of(&[7.0]).expect("one sample");
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
        assert!(Distribution::of(&[]).is_none());
    }
}
