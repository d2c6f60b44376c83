//! Keeping a stream inside its budget while it runs.
//!
//! A budget plugin reserves before the call what it expects the call to cost; a stream can
//! outrun that (a plugin that reserves an estimate rather than the worst case, a provider that
//! ignores `max_tokens`). Before each streamed chunk goes to the agent, the guard makes sure every
//! reservation the call's plugins hold still covers what was streamed so far, growing it in steps
//! with the same scopes and limits. When a limit refuses the growth the stream is cut with a
//! `budget_exceeded` error event, so spend stops at the cap instead of passing it. The grown
//! holds are released when the plugin settles the real cost (or the call ends).

use std::sync::Arc;

use crate::core::error::CallError;
use crate::core::settings::Price;
use crate::plugins::bindings::{Amount, ReserveError, Unit, Window};
use crate::plugins::host::{CallHolds, Held};
use crate::plugins::ledger::Ledger;

/// Output tokens a growth covers beyond what is needed now, so a long stream grows its
/// reservations every few hundred tokens rather than on every chunk.
pub const STEP_TOKENS: u64 = 128;

pub struct SpendGuard {
    holds: Arc<CallHolds>,
    price: Option<Price>,
    input_tokens: u64,
    /// Output tokens the reservations are known to cover; below this no check is needed.
    covered: u64,
}

impl SpendGuard {
    pub fn new(holds: Arc<CallHolds>, price: Option<Price>, input_tokens: u32) -> SpendGuard {
        SpendGuard {
            holds,
            price,
            input_tokens: u64::from(input_tokens),
            covered: 0,
        }
    }

    /// What an amount of `unit` must cover once `output` tokens were streamed.
    fn need(&self, unit: Unit, output: u64) -> u64 {
        match unit {
            Unit::Tokens => self.input_tokens + output,
            Unit::MicroUsd => self
                .price
                .as_ref()
                .map_or(0, |p| p.cost(self.input_tokens, 0, output)),
        }
    }

    /// Make every reservation cover `output` streamed tokens; `Err` names the limit that
    /// refused, and the stream must stop before sending them.
    pub async fn cover(&mut self, ledger: &Ledger, output: u64) -> Result<(), CallError> {
        if output <= self.covered {
            return Ok(());
        }
        // Work on a copy: the ledger is awaited meanwhile.
        let held = self.holds.lock().clone();
        let mut covered_by_all = u64::MAX;
        for h in &held {
            if self.growth(h, output).is_empty() {
                covered_by_all = covered_by_all.min(self.covers(h));
                continue;
            }
            // A step ahead, so the ledger is not asked on every chunk; where the limit leaves
            // less room than a step, just what is needed now.
            let mut grown = None;
            for target in [output + STEP_TOKENS, output] {
                let growth = self.growth(h, target);
                let amounts: Vec<Amount> = growth.iter().map(|(_, a)| a.clone()).collect();
                match ledger.reserve(&amounts).await {
                    Ok(id) => {
                        grown = Some((id, growth));
                        break;
                    }
                    Err(e @ ReserveError::Unavailable(_)) => return Err(over_budget(e)),
                    Err(e) if target == output => return Err(over_budget(e)),
                    Err(_) => {}
                }
            }
            let Some((id, growth)) = grown else {
                continue;
            };
            let mut live = self.holds.lock();
            match live.iter_mut().find(|x| x.id == h.id) {
                Some(h) => {
                    h.extra.push(id);
                    for (i, a) in &growth {
                        h.grown[*i] += a.amount;
                    }
                    covered_by_all = covered_by_all.min(self.covers(h));
                }
                // Settled meanwhile: the growth is not needed.
                None => ledger.release(id),
            }
        }
        self.covered = covered_by_all;
        Ok(())
    }

    /// The further amounts `h` needs to cover `output` tokens (empty if it covers them).
    fn growth(&self, h: &Held, output: u64) -> Vec<(usize, Amount)> {
        let mut out = Vec::new();
        for (i, a) in h.amounts.iter().enumerate() {
            let have = a.amount.saturating_add(h.grown[i]);
            let want = self.need(a.unit, output);
            if want > have {
                out.push((
                    i,
                    Amount {
                        scope: a.scope.clone(),
                        unit: a.unit,
                        window: a.window,
                        amount: want - have,
                        limit: a.limit,
                    },
                ));
            }
        }
        out
    }

    /// The output tokens every amount of `h` covers.
    fn covers(&self, h: &Held) -> u64 {
        h.amounts
            .iter()
            .zip(&h.grown)
            .map(|(a, g)| self.covered_tokens(a.unit, a.amount.saturating_add(*g)))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The output tokens an amount of `unit` of size `have` covers (a lower bound).
    fn covered_tokens(&self, unit: Unit, have: u64) -> u64 {
        match unit {
            Unit::Tokens => have.saturating_sub(self.input_tokens),
            Unit::MicroUsd => match &self.price {
                Some(p) if p.output_per_mtok > 0.0 => {
                    let left = have.saturating_sub(p.cost(self.input_tokens, 0, 0));
                    // One token less than the division says: `cost` rounds up.
                    ((left as f64 / p.output_per_mtok).floor() as u64).saturating_sub(1)
                }
                _ => u64::MAX,
            },
        }
    }
}

fn window_name(w: Window) -> &'static str {
    match w {
        Window::Hour => "hour",
        Window::Day => "day",
        Window::Month => "month",
        Window::Total => "total",
    }
}

fn over_budget(e: ReserveError) -> CallError {
    match e {
        ReserveError::Exceeded(x) => {
            let unit = match x.unit {
                Unit::MicroUsd => "micro-USD",
                Unit::Tokens => "tokens",
            };
            CallError::Denied {
                plugin: "budget".into(),
                status: 429,
                code: "budget_exceeded".into(),
                message: format!(
                    "stream cut: {} would pass its {} limit ({} {unit} spent, {} reserved, limit {})",
                    x.scope,
                    window_name(x.window),
                    x.spent,
                    x.reserved,
                    x.limit
                ),
            }
        }
        ReserveError::Unavailable(m) => CallError::Denied {
            plugin: "budget".into(),
            status: 503,
            code: "ledger_unavailable".into(),
            message: format!("stream cut: the spend ledger cannot be reached: {m}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price() -> Price {
        Price {
            input_per_mtok: 1000.0,
            output_per_mtok: 1000.0,
            cached_input_per_mtok: None,
        }
    }

    #[tokio::test]
    async fn grows_until_the_limit_then_refuses() {
        let ledger = Ledger::default();
        let amounts = vec![Amount {
            scope: "run:r".into(),
            unit: Unit::MicroUsd,
            window: Window::Total,
            amount: 20_000,
            limit: 300_000,
        }];
        let id = ledger.reserve(&amounts).await.unwrap();
        let holds = Arc::new(CallHolds::default());
        holds.lock().push(Held {
            id,
            amounts,
            extra: Vec::new(),
            grown: vec![0],
        });
        // 10 input tokens at 1000 µ$ each; 10 output tokens fit the first 20,000.
        let mut g = SpendGuard::new(holds.clone(), Some(price()), 10);
        g.cover(&ledger, 10).await.unwrap();
        assert!(holds.lock()[0].extra.is_empty());
        g.cover(&ledger, 50).await.unwrap();
        assert_eq!(holds.lock()[0].extra.len(), 1);
        // 290 output tokens: 300,000 µ$ with the input, exactly the limit.
        g.cover(&ledger, 290).await.unwrap();
        let e = g.cover(&ledger, 291).await.unwrap_err();
        assert_eq!(e.code(), "budget_exceeded");
        assert!(e.to_string().contains("run:r"), "{e}");
    }

    #[tokio::test]
    async fn nothing_held_means_nothing_to_guard() {
        let ledger = Ledger::default();
        let mut g = SpendGuard::new(Arc::default(), Some(price()), 10);
        g.cover(&ledger, 1_000_000).await.unwrap();
    }
}
