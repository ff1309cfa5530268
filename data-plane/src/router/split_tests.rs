//! The weighted split: proportions, stickiness, stable hashing, drained
//! and excluded targets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use super::*;
use crate::router::testing::{Catalog, Req, table_with_tiers, three_tiers, tier};
use Complexity::{Moderate, Simple};

fn shares(routes: impl Iterator<Item = Route>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in routes {
        *counts.entry(r.model().to_string()).or_default() += 1;
    }
    counts
}

#[test]
fn random_split_follows_the_weights() {
    let catalog = Catalog::standard();
    let table = three_tiers();
    let n = 20_000;
    let counts = shares((0..n).map(|seed| {
        let mut req = Req::new(Moderate);
        req.seed = seed;
        req.route(&table, &catalog).unwrap()
    }));
    let std = counts["std"] as f64 / n as f64;
    assert!((std - 0.8).abs() < 0.015, "{counts:?}");
    assert_eq!(counts["std"] + counts["alt"], n as usize);
}

#[test]
fn sticky_split_follows_the_weights_over_users() {
    let catalog = Catalog::standard();
    let mut table = three_tiers();
    table.sticky_by_user = true;
    let n = 20_000;
    let counts = shares((0..n).map(|i| {
        let mut req = Req::new(Moderate);
        req.user = Some(format!("user-{i}"));
        req.seed = 7; // ignored when sticky
        req.route(&table, &catalog).unwrap()
    }));
    let std = counts["std"] as f64 / n as f64;
    assert!((std - 0.8).abs() < 0.015, "{counts:?}");
}

#[test]
fn sticky_users_keep_their_target_whatever_the_seed() {
    let catalog = Catalog::standard();
    let mut table = three_tiers();
    table.sticky_by_user = true;
    for i in 0..200 {
        let mut req = Req::new(Moderate);
        req.user = Some(format!("user-{i}"));
        let first = req.route(&table, &catalog).unwrap();
        assert!(
            first.explanation.contains("sticky 80/20 split"),
            "{}",
            first.explanation
        );
        for seed in [1, 2, 99, u64::MAX] {
            req.seed = seed;
            assert_eq!(req.route(&table, &catalog).unwrap().model(), first.model());
        }
    }
}

#[test]
fn different_tables_split_the_same_users_independently() {
    let catalog = Catalog::standard();
    let mut table = table_with_tiers(vec![tier("t", None, &[("std", 1), ("alt", 1)], &[])]);
    table.sticky_by_user = true;
    let n = 2_000;
    let differ = (0..n)
        .filter(|i| {
            let mut req = Req::new(Moderate);
            req.user = Some(format!("user-{i}"));
            let a = req.route_named("support", &table, &catalog).unwrap();
            let b = req.route_named("sales", &table, &catalog).unwrap();
            a.model() != b.model()
        })
        .count();
    // Independent 50/50 splits disagree for about half the users.
    assert!((800..1_200).contains(&differ), "{differ}");
}

#[test]
fn sticky_hash_is_pinned() {
    // Changing these moves users between targets on upgrade: don't.
    // Checked against an independent FNV-1a + SplitMix64 implementation;
    // mix(0) is SplitMix64's published first output for seed 0.
    assert_eq!(sticky_hash("support", "alice"), 0x5226_acac_4811_dab4);
    assert_eq!(sticky_hash("", ""), 0x01df_27c8_adb0_f2d1);
    assert_eq!(mix(0), 0xe220_a839_7b1d_cdaf);
    assert_ne!(sticky_hash("ab", "c"), sticky_hash("a", "bc"));
}

#[test]
fn sticky_table_without_a_user_splits_per_request() {
    let catalog = Catalog::standard();
    let mut table = three_tiers();
    table.sticky_by_user = true;
    let counts = shares((0..2_000).map(|seed| {
        let mut req = Req::new(Moderate);
        req.seed = seed;
        req.route(&table, &catalog).unwrap()
    }));
    assert!(counts["alt"] > 200, "{counts:?}");
    let r = Req::new(Moderate).route(&table, &catalog).unwrap();
    assert!(r.explanation.contains("random (no user) 80/20 split"));
}

#[test]
fn drained_targets_get_no_traffic() {
    let catalog = Catalog::standard();
    let table = table_with_tiers(vec![tier("t", None, &[("std", 0), ("alt", 3)], &[])]);
    for seed in 0..500 {
        let mut req = Req::new(Simple);
        req.seed = seed;
        let r = req.route(&table, &catalog).unwrap();
        assert_eq!(r.candidates, ["alt"]);
        assert!(
            r.explanation.contains(", single target → alt"),
            "{}",
            r.explanation
        );
    }
}

#[test]
fn an_excluded_targets_share_is_redrawn_and_other_users_stay() {
    let mut catalog = Catalog::standard();
    let table = {
        let mut t = table_with_tiers(vec![tier(
            "t",
            None,
            &[("std", 50), ("alt", 30), ("mini", 20)],
            &[],
        )]);
        t.sticky_by_user = true;
        t
    };
    let users: Vec<String> = (0..5_000).map(|i| format!("u{i}")).collect();
    let route_all = |catalog: &Catalog| -> Vec<String> {
        users
            .iter()
            .map(|u| {
                let mut req = Req::new(Simple);
                req.user = Some(u.clone());
                req.route(&table, catalog).unwrap().model().to_string()
            })
            .collect()
    };
    let before = route_all(&catalog);
    catalog.0.remove("std");
    let after = route_all(&catalog);
    let mut moved_to = HashMap::<&str, usize>::new();
    for (b, a) in before.iter().zip(&after) {
        if b == "std" {
            *moved_to.entry(a.as_str()).or_default() += 1;
        } else {
            assert_eq!(a, b, "a user of an eligible target moved");
        }
    }
    // std's users spread 30:20 over alt and mini.
    let alt = moved_to["alt"] as f64 / (moved_to["alt"] + moved_to["mini"]) as f64;
    assert!((alt - 0.6).abs() < 0.05, "{moved_to:?}");

    let mut req = Req::new(Simple);
    req.user = Some(
        users
            .iter()
            .zip(&before)
            .find(|(_, b)| *b == "std")
            .unwrap()
            .0
            .clone(),
    );
    let r = req.route(&table, &catalog).unwrap();
    assert!(
        r.explanation
            .contains("sticky 50/30/20 split, redrawn from excluded std"),
        "{}",
        r.explanation
    );
}
