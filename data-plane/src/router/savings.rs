//! What a call cost, and what it would have cost on the routing table's
//! baseline model: the savings routing reports in responses and telemetry.

use aios_model::Usd;
use aios_model::{Model, RoutingTable};

use crate::backend::Usage;

/// Tokens per price unit (prices are per million tokens).
const TOKENS_PER_MTOK: i128 = 1_000_000;

/// The list price of `input_tokens` and `output_tokens` on `model`,
/// rounded half-up to the micro-USD once, on the sum (so many small parts
/// do not each round).
pub fn cost(model: &Model, input_tokens: u64, output_tokens: u64) -> Usd {
    // u64 × i64 fits i128; only the sum of two such can overflow.
    let scaled = (i128::from(input_tokens) * i128::from(model.input_price_per_mtok.micros()))
        .saturating_add(
            i128::from(output_tokens) * i128::from(model.output_price_per_mtok.micros()),
        );
    let micros = scaled
        .saturating_add(TOKENS_PER_MTOK / 2)
        .div_euclid(TOKENS_PER_MTOK);
    Usd::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
}

/// A call's cost against the baseline's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Savings {
    /// What the call cost on the model that served it.
    pub actual: Usd,
    /// What the same tokens cost on the baseline model; `None` when the
    /// table names no baseline or the catalog lacks it.
    pub baseline: Option<Usd>,
    /// `baseline - actual`; negative when the route cost more than the
    /// baseline would have. `None` exactly when `baseline` is.
    pub saved: Option<Usd>,
}

/// Prices `usage` on `used` (the model that served the call) and on the
/// table's baseline model, looked up in `models`.
///
/// The baseline is priced on the same token counts: the question answered
/// is "what would these tokens have cost there", not a guess at how another
/// tokenizer would have counted them.
pub fn savings<'m>(
    table: &RoutingTable,
    models: &impl Fn(&str) -> Option<&'m Model>,
    used: &Model,
    usage: Usage,
) -> Savings {
    let actual = cost(used, usage.input_tokens, usage.output_tokens);
    let baseline = table
        .baseline_model
        .as_deref()
        .and_then(models)
        .map(|baseline| cost(baseline, usage.input_tokens, usage.output_tokens));
    Savings {
        actual,
        baseline,
        saved: baseline.map(|b| b.saturating_sub(actual)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::router::testing::{model, table_with_tiers};

    fn usd(micros: i64) -> Usd {
        Usd::from_micros(micros)
    }

    fn usage(input_tokens: u64, output_tokens: u64) -> Usage {
        Usage {
            input_tokens,
            output_tokens,
        }
    }

    #[test]
    fn cost_is_tokens_times_price_per_million() {
        // $0.15 in, $0.60 out per Mtok.
        let mini = model("mini", 150_000, 600_000);
        assert_eq!(cost(&mini, 1_000_000, 0), usd(150_000));
        assert_eq!(cost(&mini, 0, 1_000_000), usd(600_000));
        // 1000 × 0.15 + 500 × 0.60 = 150 + 300 = 450 micro-USD.
        assert_eq!(cost(&mini, 1_000, 500), usd(450));
        assert_eq!(cost(&mini, 0, 0), Usd::ZERO);
    }

    #[test]
    fn cost_rounds_the_sum_half_up() {
        // 3 tokens × 0.15 = 0.45 micro-USD each side alone rounds to 0;
        // 0.45 + 0.6×… : 3 in (0.45) + 1 out (0.6) = 1.05 → 1.
        let mini = model("mini", 150_000, 600_000);
        assert_eq!(cost(&mini, 3, 0), Usd::ZERO);
        assert_eq!(cost(&mini, 3, 1), usd(1));
        // Exactly half a micro-USD rounds up.
        let half = model("half", 500_000, 0);
        assert_eq!(cost(&half, 1, 0), usd(1));
        // Huge counts saturate instead of overflowing.
        let dear = model("dear", i64::MAX, i64::MAX);
        assert_eq!(cost(&dear, u64::MAX, u64::MAX), Usd::MAX);
    }

    #[test]
    fn savings_against_the_baseline() {
        let mini = model("mini", 150_000, 600_000);
        let big = model("big", 2_500_000, 10_000_000);
        let mut table = table_with_tiers(vec![]);
        table.baseline_model = Some("big".into());
        let models = |name: &str| [&mini, &big].into_iter().find(|m| m.provider_model == name);

        // 2000 in, 1000 out: mini 300 + 600 = 900; big 5000 + 10000 = 15000.
        let s = savings(&table, &models, &mini, usage(2_000, 1_000));
        assert_eq!(s.actual, usd(900));
        assert_eq!(s.baseline, Some(usd(15_000)));
        assert_eq!(s.saved, Some(usd(14_100)));

        // Served by the baseline itself: nothing saved.
        let s = savings(&table, &models, &big, usage(2_000, 1_000));
        assert_eq!(s.saved, Some(Usd::ZERO));

        // Served by a dearer model than the baseline: negative savings.
        table.baseline_model = Some("mini".into());
        let s = savings(&table, &models, &big, usage(2_000, 1_000));
        assert_eq!(s.saved, Some(usd(-14_100)));
    }

    #[test]
    fn no_baseline_no_savings() {
        let mini = model("mini", 150_000, 600_000);
        let models = |name: &str| (name == "mini").then_some(&mini);
        let mut table = table_with_tiers(vec![]);
        let s = savings(&table, &models, &mini, usage(100, 100));
        assert_eq!(
            s,
            Savings {
                actual: usd(75),
                baseline: None,
                saved: None
            }
        );
        // A baseline the catalog lacks reports none either.
        table.baseline_model = Some("gone".into());
        assert_eq!(savings(&table, &models, &mini, usage(100, 100)).saved, None);
    }
}
