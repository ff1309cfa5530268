//! The readable tables printed before the JSON line.

use aios_tests::bench::Machine;
use serde_json::Value;

use crate::{
    Options,
    gateway::{BIFROST_P99_US, LITELLM_RUST_P99_US},
    measure::{LATENCY_NODES, P99_BOUND, TARGET_ADDED_P99_US, TARGET_RPS_PER_CORE, field},
};

/// `value`'s numeric fields `keys`, each with `decimals`.
fn cells(value: &Value, keys: &[&str], decimals: usize) -> Vec<String> {
    keys.iter()
        .map(|key| format!("{:.*}", decimals, field(value, key)))
        .collect()
}

/// A table: the first column left-aligned, the others right-aligned.
fn print_table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let all: Vec<&Vec<String>> = std::iter::once(&header).chain(rows).collect();
    let width = |i: usize| {
        all.iter()
            .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
            .max()
    };
    let widths: Vec<usize> = (0..header.len()).map(|i| width(i).unwrap_or(0)).collect();
    println!("\n{title}");
    for row in all {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| match i {
                0 => format!("{cell:<w$}"),
                _ => format!("{cell:>w$}"),
            })
            .collect();
        println!("{}", line.join("  "));
    }
}

pub(crate) fn report(options: &Options, machine: &Machine, results: &Value) {
    println!(
        "bench-overhead: instant backend (in process in parts 1-3; an instant HTTP provider in part 4); every request a cache miss; spans built and handed to the outbox; mimalloc (the node binary's allocator)"
    );
    println!(
        "machine: {} CPUs, {} (the load generator shares the machine)",
        machine.nproc, machine.cpu
    );
    if let Some(places) = results["latency"].as_object() {
        let mut rows = Vec::new();
        let mut tails = Vec::new();
        for (place, latency) in places.iter().filter(|(_, v)| v.is_object()) {
            for name in LATENCY_NODES {
                let (c, s) = (&latency[name]["client"], &latency[name]["server"]);
                let mut row = vec![place.clone(), name.into()];
                row.extend(cells(c, &["p50_us", "p99_us", "p999_us", "mean_us"], 1));
                row.extend(cells(s, &["p50_us", "p99_us"], 1));
                rows.push(row);
            }
            for (label, prefix) in [("added", ""), ("calibration added", "calibration_")] {
                let key = |k: &str| format!("{prefix}{k}");
                let (p50, p99) = (key("added_server_p50_us"), key("added_server_p99_us"));
                let mut row = vec![place.clone(), label.into()];
                row.extend(cells(
                    latency,
                    &[&key("added_p50_us"), &key("added_p99_us")],
                    1,
                ));
                row.extend(["".into(), "".into()]);
                row.extend(cells(latency, &[&p50, &p99], 1));
                rows.push(row);
                let tail = field(latency, &p99) / field(latency, &p50);
                tails.push(format!("{place} {label}: ×{tail:.1}"));
            }
        }
        let title = format!(
            "1. latency at 1 in flight, {} requests per node and client placement, blocks of {} (µs; handler = the node's own time; target: added p99 ≤ {TARGET_ADDED_P99_US})",
            options.requests, options.block
        );
        let header = [
            "client on",
            "node",
            "p50",
            "p99",
            "p99.9",
            "mean",
            "handler p50",
            "handler p99",
        ];
        print_table(&title, &header, &rows);
        println!(
            "calibration: stages off, the backend computes for {:.0} µs (arithmetic only: no memory, no allocation, no call); what the machine's tail makes of plain CPU time. Handler added p99 ÷ p50: {}",
            field(&results["latency"], "calibration_work_us"),
            tails.join(", ")
        );
    }
    let throughput = &results["throughput"];
    if !throughput.is_null() && !throughput["off"].is_null() {
        let mut rows = Vec::new();
        for name in ["off", "on"] {
            for step in throughput[name]["steps"].as_array().into_iter().flatten() {
                let mut row = vec![name.to_string()];
                row.extend(cells(step, &["concurrency", "rps"], 0));
                row.extend(cells(
                    step,
                    &["p50_ms", "p99_ms", "server_cores", "process_cores"],
                    2,
                ));
                row.extend(cells(step, &["server_cpu_us_per_request"], 1));
                rows.push(row);
            }
        }
        let title = format!(
            "2. throughput, node on one thread, {} connections, {:.1} s per step",
            options.connections,
            options.step.as_secs_f64()
        );
        let header = [
            "node",
            "in flight",
            "req/s",
            "p50 ms",
            "p99 ms",
            "node cores",
            "process cores",
            "node µs CPU/req",
        ];
        print_table(&title, &header, &rows);
        for name in ["off", "on"] {
            let (t, best) = (&throughput[name], &throughput[name]["best"]);
            println!(
                "{name:>3}: best with p99 < {} ms: {:.0} req/s at {} in flight ({:.2} node cores, {:.1} µs CPU/request); {:.2}× the target of {TARGET_RPS_PER_CORE} req/s per core",
                P99_BOUND.as_millis(),
                field(best, "rps"),
                field(best, "concurrency"),
                field(best, "server_cores"),
                field(t, "server_cpu_us_per_request"),
                field(best, "rps") / TARGET_RPS_PER_CORE,
            );
        }
    }
    if let Some(stages) = results["stages"].as_array() {
        let rows: Vec<Vec<String>> = stages
            .iter()
            .map(|r| {
                let mut row = vec![r["stages"].as_str().unwrap_or("").to_string()];
                row.extend(cells(r, &["p50_us", "p99_us", "mean_us", "step_p50_us"], 2));
                row
            })
            .collect();
        let title = "3a. the pipeline in process (no gRPC), stages added in stack order (µs)";
        print_table(title, &["stages", "p50", "p99", "mean", "step p50"], &rows);
    }
    if let Some(functions) = results["functions"].as_array() {
        let rows: Vec<Vec<String>> = functions
            .iter()
            .map(|r| {
                let mut row = vec![r["function"].as_str().unwrap_or("").to_string()];
                row.extend(cells(r, &["p50_ns", "p99_ns", "mean_ns"], 0));
                row
            })
            .collect();
        let title = "3b. stage functions alone, on the bench request (ns per call, timer included)";
        print_table(title, &["function", "p50", "p99", "mean"], &rows);
    }
    if !results["http"].is_null() {
        report_http(options, &results["http"]);
    }
}

/// Part 4: the data plane as an OpenAI-compatible gateway over HTTP.
fn report_http(options: &Options, http: &Value) {
    if let Some(places) = http["latency"].as_object() {
        let mut rows = Vec::new();
        for (place, latency) in places {
            for name in ["off", "on"] {
                let node = &latency[name];
                for series in ["direct", "gateway"] {
                    let mut row = vec![place.clone(), name.into(), series.into()];
                    row.extend(cells(
                        &node[series],
                        &["p50_us", "p99_us", "p999_us", "mean_us"],
                        1,
                    ));
                    rows.push(row);
                }
                let mut row = vec![place.clone(), name.into(), "added".into()];
                row.extend(cells(
                    node,
                    &[
                        "added_p50_us",
                        "added_p99_us",
                        "added_p999_us",
                        "added_mean_us",
                    ],
                    1,
                ));
                rows.push(row);
            }
        }
        let title = format!(
            "4a. OpenAI-compatible HTTP at 1 in flight: straight to the instant provider (direct) and through the node's /v1/chat/completions (gateway), {} requests each, blocks of {} (µs; off = stages off, the gateway alone; on = every stage)",
            options.http_requests, options.block
        );
        let header = ["client on", "node", "to", "p50", "p99", "p99.9", "mean"];
        print_table(&title, &header, &rows);
        for (place, latency) in places {
            let added = |name: &str, key: &str| field(&latency[name], key);
            println!(
                "{place}: gateway alone (stages off) adds p50 {:.1} / p99 {:.1} µs; every stage on adds p50 {:.1} / p99 {:.1} µs (the stages themselves p50 {:.1} / p99 {:.1})",
                added("off", "added_p50_us"),
                added("off", "added_p99_us"),
                added("on", "added_p50_us"),
                added("on", "added_p99_us"),
                field(latency, "stages_added_p50_us"),
                field(latency, "stages_added_p99_us"),
            );
        }
        println!(
            "published p99 added: LiteLLM-Rust {LITELLM_RUST_P99_US} µs, Bifrost {BIFROST_P99_US} µs (without JSON and the upstream call); target ≤ {TARGET_ADDED_P99_US} µs"
        );
        if let Some(node_thread) = places.get("node_thread") {
            for name in ["off", "on"] {
                let p99 = field(&node_thread[name], "added_p99_us");
                println!(
                    "  {name:>3}, client on the node's thread: p99 added {p99:.1} µs = {:.2}× LiteLLM-Rust, {:.2}× Bifrost, {:.2}× the target",
                    p99 / LITELLM_RUST_P99_US,
                    p99 / BIFROST_P99_US,
                    p99 / TARGET_ADDED_P99_US,
                );
            }
        }
    }
    let throughput = &http["throughput"];
    if throughput.is_null() {
        return;
    }
    let mut rows = Vec::new();
    for name in ["off", "on"] {
        for step in throughput[name]["steps"].as_array().into_iter().flatten() {
            let mut row = vec![name.to_string()];
            row.extend(cells(step, &["concurrency", "rps"], 0));
            row.extend(cells(
                step,
                &["p50_ms", "p99_ms", "server_cores", "process_cores"],
                2,
            ));
            row.extend(cells(step, &["server_cpu_us_per_request"], 1));
            rows.push(row);
        }
    }
    let title = format!(
        "4b. HTTP throughput through the node's /v1/chat/completions, node on one thread, the provider on the load's thread, one connection per request in flight, {:.1} s per step",
        options.step.as_secs_f64()
    );
    let header = [
        "node",
        "in flight",
        "req/s",
        "p50 ms",
        "p99 ms",
        "node cores",
        "process cores",
        "node µs CPU/req",
    ];
    print_table(&title, &header, &rows);
    for name in ["off", "on"] {
        let (t, best) = (&throughput[name], &throughput[name]["best"]);
        println!(
            "{name:>3}: best with p99 < {} ms: {:.0} req/s at {} in flight ({:.2} node cores, {:.1} µs node CPU/request: {:.0} req/s per core)",
            P99_BOUND.as_millis(),
            field(best, "rps"),
            field(best, "concurrency"),
            field(best, "server_cores"),
            field(t, "server_cpu_us_per_request"),
            field(t, "capacity_per_core_rps"),
        );
    }
}
