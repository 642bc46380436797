//! Whether a region is down for a service, from the latest observations of every vantage.
//!
//! Pure and dependency-free (only `std`), so the state machine or the controller can use it
//! as is. The rule:
//!
//! - a **vantage region** counts as failing when a strict majority of *its nodes that
//!   reported* see the region failing (a tie is not failing);
//! - a vantage region with no report does not count as failing;
//! - the region is **down** only when a strict majority of *all* vantage regions known for
//!   the cluster count as failing.
//!
//! One node therefore moves at most its own vantage region, and one vantage region is never a
//! majority of two or more: one partitioned node can never make a region down. (A cluster
//! whose voters all sit in one region has one vantage region; there, that region's nodes
//! decide alone, which is inherent.)

use std::collections::BTreeMap;

/// How one vantage region sees the probed region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VantageView {
    /// A strict majority of its reporting nodes see the region failing.
    Failing,
    /// A strict majority of its reporting nodes see the region healthy.
    Healthy,
    /// As many failing as healthy reports: does not count as failing.
    Split,
    /// No node of this vantage region reported: does not count as failing.
    Silent,
}

/// The decision for one (service, region), with its reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionVerdict {
    /// Whether a majority of vantage regions see the region failing.
    pub down: bool,
    /// Each vantage region's view, in the order the vantage regions were given (regions that
    /// only appear in reports come last, in name order).
    pub views: Vec<(String, VantageView)>,
    /// How many vantage regions count as failing.
    pub failing: usize,
    /// How many vantage regions there are (the majority's denominator).
    pub total: usize,
    /// For people: `down: failing from us-east, eu-west (2 of 3 vantage regions); healthy
    /// from ap-south`.
    pub explanation: String,
}

/// Decides whether a region is down for a service.
///
/// `reports` maps each vantage node (Raft node id) to its region and its latest verdict
/// (`true` = healthy) about the probed region; `vantage_regions` lists every vantage region
/// of the cluster (the regions of the voters). A region that appears in `reports` but not in
/// `vantage_regions` is counted as a vantage region too, so a stale membership list can only
/// make "down" harder to reach, never easier.
pub fn decide<I, S>(reports: &BTreeMap<u64, (String, bool)>, vantage_regions: I) -> RegionVerdict
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    // (failing, healthy) node counts per vantage region, in a stable order.
    let mut order: Vec<String> = Vec::new();
    for region in vantage_regions {
        let region = region.as_ref();
        if !order.iter().any(|r| r == region) {
            order.push(region.to_string());
        }
    }
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (region, healthy) in reports.values() {
        let entry = counts.entry(region.as_str()).or_default();
        if *healthy {
            entry.1 += 1;
        } else {
            entry.0 += 1;
        }
    }
    for region in counts.keys() {
        if !order.iter().any(|r| r == region) {
            order.push((*region).to_string());
        }
    }

    let views: Vec<(String, VantageView)> = order
        .into_iter()
        .map(|region| {
            let view = match counts.get(region.as_str()) {
                None => VantageView::Silent,
                Some((failing, healthy)) if failing > healthy => VantageView::Failing,
                Some((failing, healthy)) if healthy > failing => VantageView::Healthy,
                Some(_) => VantageView::Split,
            };
            (region, view)
        })
        .collect();
    let total = views.len();
    let failing = views
        .iter()
        .filter(|(_, v)| *v == VantageView::Failing)
        .count();
    let down = total > 0 && failing * 2 > total;
    let explanation = explain(down, &views, failing, total, &counts);
    RegionVerdict {
        down,
        views,
        failing,
        total,
        explanation,
    }
}

fn explain(
    down: bool,
    views: &[(String, VantageView)],
    failing: usize,
    total: usize,
    counts: &BTreeMap<&str, (usize, usize)>,
) -> String {
    if total == 0 {
        return "up: no vantage regions known".to_string();
    }
    let names = |want: VantageView| -> Vec<&str> {
        views
            .iter()
            .filter(|(_, v)| *v == want)
            .map(|(r, _)| r.as_str())
            .collect()
    };
    let failing_from = names(VantageView::Failing);
    let mut parts = Vec::new();
    let needed = total / 2 + 1;
    let tally = if down {
        format!("{failing} of {total} vantage regions")
    } else {
        format!("{failing} of {total} vantage regions, {needed} needed")
    };
    if failing_from.is_empty() {
        parts.push(format!("failing from no vantage region ({tally})"));
    } else {
        parts.push(format!(
            "failing from {} ({tally})",
            failing_from.join(", ")
        ));
    }
    let healthy_from = names(VantageView::Healthy);
    if !healthy_from.is_empty() {
        parts.push(format!("healthy from {}", healthy_from.join(", ")));
    }
    let split: Vec<String> = names(VantageView::Split)
        .into_iter()
        .map(|r| {
            let (f, h) = counts.get(r).copied().unwrap_or_default();
            format!("{r} ({f} of {} nodes failing)", f + h)
        })
        .collect();
    if !split.is_empty() {
        parts.push(format!("split in {}", split.join(", ")));
    }
    let silent = names(VantageView::Silent);
    if !silent.is_empty() {
        parts.push(format!("no report from {}", silent.join(", ")));
    }
    format!("{}: {}", if down { "down" } else { "up" }, parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];

    fn reports(entries: &[(u64, &str, bool)]) -> BTreeMap<u64, (String, bool)> {
        entries
            .iter()
            .map(|(node, region, healthy)| (*node, (region.to_string(), *healthy)))
            .collect()
    }

    #[test]
    fn one_partitioned_node_cannot_make_a_region_down() {
        // The only node that reports failing is alone in its region...
        let v = decide(
            &reports(&[
                (1, "us-east", false),
                (2, "eu-west", true),
                (3, "ap-south", true),
            ]),
            REGIONS,
        );
        assert!(!v.down, "{}", v.explanation);
        assert_eq!(
            v.explanation,
            "up: failing from us-east (1 of 3 vantage regions, 2 needed); \
             healthy from eu-west, ap-south"
        );
        // ...even when nobody else reported at all.
        let v = decide(&reports(&[(1, "us-east", false)]), REGIONS);
        assert!(!v.down);
        assert_eq!(v.failing, 1);
        // In every cluster of two or more vantage regions, whatever the node and region.
        for n in 2..=5 {
            let regions: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
            for (i, r) in regions.iter().enumerate() {
                let v = decide(&reports(&[(i as u64, r, false)]), &regions);
                assert!(!v.down, "{n} regions: {}", v.explanation);
            }
        }
    }

    #[test]
    fn two_of_three_vantage_regions_failing_is_down() {
        let v = decide(
            &reports(&[
                (1, "us-east", false),
                (2, "eu-west", false),
                (3, "ap-south", true),
            ]),
            REGIONS,
        );
        assert!(v.down);
        assert_eq!(
            v.explanation,
            "down: failing from us-east, eu-west (2 of 3 vantage regions); healthy from ap-south"
        );
        assert_eq!(v.failing, 2);
        assert_eq!(v.total, 3);
    }

    #[test]
    fn a_silent_region_counts_in_the_denominator_not_as_failing() {
        // Two failing of three, the third silent: still a majority.
        let v = decide(
            &reports(&[(1, "us-east", false), (2, "eu-west", false)]),
            REGIONS,
        );
        assert!(v.down);
        assert_eq!(
            v.explanation,
            "down: failing from us-east, eu-west (2 of 3 vantage regions); \
             no report from ap-south"
        );
        // One failing, two silent: not down (silence is not failure).
        let v = decide(&reports(&[(1, "us-east", false)]), REGIONS);
        assert!(!v.down);
        assert_eq!(
            v.views,
            vec![
                ("us-east".to_string(), VantageView::Failing),
                ("eu-west".to_string(), VantageView::Silent),
                ("ap-south".to_string(), VantageView::Silent),
            ]
        );
    }

    #[test]
    fn ties_are_not_failing() {
        // Inside a vantage region: one of two nodes failing is a split, not failing.
        let v = decide(
            &reports(&[
                (1, "us-east", false),
                (2, "eu-west", false),
                (3, "eu-west", true),
                (4, "ap-south", true),
            ]),
            REGIONS,
        );
        assert!(!v.down);
        assert_eq!(
            v.explanation,
            "up: failing from us-east (1 of 3 vantage regions, 2 needed); \
             healthy from ap-south; split in eu-west (1 of 2 nodes failing)"
        );
        // Across vantage regions: two of four is not a majority.
        let four = ["a", "b", "c", "d"];
        let v = decide(
            &reports(&[
                (1, "a", false),
                (2, "b", false),
                (3, "c", true),
                (4, "d", true),
            ]),
            four,
        );
        assert!(!v.down);
        let v = decide(
            &reports(&[(1, "a", false), (2, "b", false), (3, "c", false)]),
            four,
        );
        assert!(v.down);
    }

    #[test]
    fn node_majority_inside_a_vantage_region() {
        // Two of three us-east nodes failing makes us-east failing.
        let v = decide(
            &reports(&[
                (1, "us-east", false),
                (2, "us-east", false),
                (3, "us-east", true),
                (4, "eu-west", false),
            ]),
            REGIONS,
        );
        assert!(v.down, "{}", v.explanation);
        assert_eq!(v.views[0], ("us-east".to_string(), VantageView::Failing));
    }

    #[test]
    fn unknown_reporting_regions_raise_the_bar() {
        // A report from a region missing from the membership list is one more vantage
        // region: 2 of 4 is not down.
        let v = decide(
            &reports(&[
                (1, "us-east", false),
                (2, "eu-west", false),
                (9, "zz-new", true),
            ]),
            REGIONS,
        );
        assert_eq!(v.total, 4);
        assert!(!v.down);
    }

    #[test]
    fn no_vantage_regions_is_never_down() {
        let v = decide(&BTreeMap::new(), Vec::<String>::new());
        assert!(!v.down);
        assert_eq!(v.explanation, "up: no vantage regions known");
        // Duplicated region names count once.
        let v = decide(&reports(&[(1, "a", false)]), ["a", "a", "b"]);
        assert_eq!(v.total, 2);
        assert!(!v.down);
    }

    #[test]
    fn all_healthy() {
        let v = decide(
            &reports(&[
                (1, "us-east", true),
                (2, "eu-west", true),
                (3, "ap-south", true),
            ]),
            REGIONS,
        );
        assert!(!v.down);
        assert_eq!(
            v.explanation,
            "up: failing from no vantage region (0 of 3 vantage regions, 2 needed); \
             healthy from us-east, eu-west, ap-south"
        );
    }
}
