//! The readable tables printed before the JSON line.

use aios_tests::bench::Machine;
use serde_json::Value;

use crate::{
    Options, TARGET_ADDED_P99_US,
    overhead::field,
    world::{BUDGET_LIMIT_USD, TIGHT_LIMIT_USD},
};

/// `value[key]` with `decimals`, right-aligned in `width`.
fn num(value: &Value, key: &str, decimals: usize, width: usize) -> String {
    format!("{:>width$.decimals$}", field(value, key))
}

fn nums(value: &Value, keys: &[&str], decimals: usize, width: usize) -> String {
    keys.iter()
        .map(|key| num(value, key, decimals, width))
        .collect::<Vec<_>>()
        .join("")
}

pub(crate) fn report(options: &Options, machine: &Machine, results: &Value) {
    println!(
        "bench-budget: an embedded control plane on its own thread; one node (every stage, instant models) and the client on another"
    );
    println!("machine: {} CPUs, {}", machine.nproc, machine.cpu);
    let us = ["p50_us", "p99_us", "p999_us", "mean_us"];
    if let Some(a) = results.get("in_process") {
        println!(
            "\n1a. the pipeline in process, {} calls per row, a daily BLOCK budget of ${BUDGET_LIMIT_USD} (µs)",
            options.in_process
        );
        println!(
            "{:<50}{:>9}{:>9}{:>9}{:>9}{:>12}{:>12}",
            "stages", "p50", "p99", "p99.9", "mean", "added p50", "added p99"
        );
        for row in a["rows"].as_array().into_iter().flatten() {
            println!(
                "{:<50}{}{}{}",
                row["row"].as_str().unwrap_or(""),
                nums(row, &us, 2, 9),
                num(row, "added_p50_us", 2, 12),
                num(row, "added_p99_us", 2, 12),
            );
        }
        println!(
            "Allowances calls: {} for {} budgeted calls, warm-up included ({:.4} per call; the reporter runs only between batches here); ledger transactions: {}",
            field(a, "allowances_calls"),
            field(a, "budgeted_requests"),
            field(a, "allowances_per_request"),
            field(a, "ledger_writes"),
        );
    }
    if let Some(b) = results.get("end_to_end") {
        println!(
            "\n1b. end to end over gRPC, 1 in flight, {} requests per tenant after {} of warm-up, blocks of {} (µs; handler = the node's own time)",
            options.requests, options.warmup, options.block
        );
        println!(
            "{:<16}{:>9}{:>9}{:>9}{:>9}{:>13}{:>13}",
            "tenant", "p50", "p99", "p99.9", "mean", "handler p50", "handler p99"
        );
        for (name, key) in [("with budget", "budget"), ("without budget", "no_budget")] {
            let side = &b[key];
            println!(
                "{:<16}{}{}{}",
                name,
                nums(&side["client"], &us, 1, 9),
                num(&side["handler"], "p50_us", 1, 13),
                num(&side["handler"], "p99_us", 1, 13),
            );
        }
        println!(
            "{:<16}{}{}{:>18}{}{}",
            "added",
            num(b, "added_p50_us", 1, 9),
            num(b, "added_p99_us", 1, 9),
            "",
            num(b, "added_handler_p50_us", 1, 13),
            num(b, "added_handler_p99_us", 1, 13),
        );
        let shares = |key: &str| -> String {
            b[key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    format!(
                        "{:.3}% > {} µs",
                        field(s, "share") * 100.0,
                        field(s, "over_us")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "handlers with budget: {}; without: {} (target for the whole pipeline: p99 added ≤ {TARGET_ADDED_P99_US} µs)",
            shares("handlers_over_budget"),
            shares("handlers_over_no_budget"),
        );
        println!(
            "Allowances calls: {} for {} budgeted requests ({:.4} per request, {:.0}/s over {:.1} s); ledger transactions: {}",
            field(b, "allowances_calls"),
            field(b, "budgeted_requests"),
            field(b, "allowances_per_request"),
            field(b, "allowances_per_second"),
            field(b, "seconds"),
            field(b, "ledger_writes"),
        );
        let paced = &b["paced"];
        println!(
            "light load, {} budgeted requests at {}/s after 3 s idle: {} Allowances calls ({:.2} per request); handler p50 {:.1} µs, p99 {:.1} µs; without budget p50 {:.1} µs, p99 {:.1} µs",
            field(paced, "requests"),
            field(paced, "rate_per_second"),
            field(paced, "allowances_calls"),
            field(paced, "allowances_per_request"),
            field(&paced["handler"], "p50_us"),
            field(&paced["handler"], "p99_us"),
            field(&paced["handler_no_budget"], "p50_us"),
            field(&paced["handler_no_budget"], "p99_us"),
        );
    }
    if let Some(c) = results.get("approvals") {
        println!(
            "\n2. approval decision (Decide returned) to the executed action's answer, {} HIGH actions per mode; the waiting node long-polls for up to {} ms (ms)",
            field(c, "approvals_per_mode"),
            field(c, "long_poll_ms"),
        );
        println!(
            "{:<44}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
            "mode", "p50", "p90", "p99", "max", "min", "mean"
        );
        let ms = ["p50_ms", "p90_ms", "p99_ms", "max_ms", "min_ms", "mean_ms"];
        for (name, key) in [
            ("wait (wait_for_approval; the node long-polls)", "wait"),
            ("watch (Watch, then re-submit)", "watch"),
            (
                "  of which: APPROVED on the watch",
                "watch_event_after_decide",
            ),
            ("told (re-submit when Decide returns)", "told"),
            ("Decide itself (the approver's call)", "decide_rpc"),
        ] {
            println!("{:<44}{}", name, nums(&c[key], &ms, 2, 9));
        }
    }
    if let Some(l) = results.get("ledger") {
        println!(
            "\nledger of the large budget: spent {} µUSD, sum of the responses' costs {} µUSD, reserved after {} µUSD: {}",
            field(l, "spent_micros"),
            field(l, "sum_of_costs_micros"),
            field(l, "reserved_micros"),
            if l["matches"].as_bool() == Some(true) {
                "exact"
            } else {
                "MISMATCH"
            }
        );
    }
    if let Some(f) = results.get("fleet") {
        println!(
            "\n3. {} requests at once over {} nodes, a budget of ${TIGHT_LIMIT_USD}",
            field(f, "requests"),
            field(f, "nodes"),
        );
        println!(
            "served {}, refused {}, failed otherwise {}; spent {} of {} µUSD ({:.1}%), overspend {} µUSD; refused while budget was left: at most {} ({:.1}% of all); {:.2} s, settled after {:.2} s; {} Allowances calls, {} ledger transactions; ledger = sum of costs: {}",
            field(f, "served"),
            field(f, "refused"),
            field(f, "failed"),
            field(f, "spent_micros"),
            field(f, "limit_micros"),
            field(f, "spent_share") * 100.0,
            field(f, "overspend_micros"),
            field(f, "refused_while_left_at_most"),
            field(f, "refused_while_left_share") * 100.0,
            field(f, "seconds"),
            field(f, "settled_seconds"),
            field(f, "allowances_calls"),
            field(f, "ledger_writes"),
            f["ledger_matches_costs"].as_bool().unwrap_or(false),
        );
        if let Some(failures) = f["failures"].as_array().filter(|f| !f.is_empty()) {
            println!("first failures: {failures:?}");
        }
    }
}
