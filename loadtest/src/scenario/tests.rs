//! The scenarios' shapes, checked without a server.

use super::*;
use rand::SeedableRng;

fn scenario(kind: ScenarioKind) -> Scenario {
    Scenario::new(ScenarioConfig {
        kind,
        run_id: "r1".into(),
        read_tags: 10,
        tag_prefix: "t".into(),
        hot_keys: 100,
        zipf_exponent: 1.0,
        decision: Decision::ReadAppend,
        data_bytes: 64,
        seed_reads: true,
    })
    .unwrap()
}

#[test]
fn consistency_queries_are_valid_and_stay_in_the_run_space() {
    let s = scenario(ScenarioKind::Consistency);
    let mut rng = SmallRng::seed_from_u64(1);
    for _ in 0..1000 {
        let q = s.random_consistency_query(&mut rng);
        assert!((1..=CONSISTENCY_MAX_ITEMS).contains(&q.items.len()));
        for item in &q.items {
            assert!(!item.types.is_empty() || !item.tags.is_empty());
            assert!(item.tags.iter().all(|t| t.starts_with("cr1:")));
            assert!(item.types.iter().all(|t| t.starts_with("Consr1T")));
        }
    }
}

#[test]
fn append_outcomes_record_acknowledged_positions() {
    let mut acked = Vec::new();
    let ok = append_outcome(
        Ok(AppendOutcome::Appended {
            last_position: Some(9),
        }),
        1,
        Some(&mut acked),
    );
    assert_eq!(ok, Outcome::Ok { items: 1 });
    assert_eq!(acked, vec![9]);
    assert_eq!(
        append_outcome(Ok(AppendOutcome::ConditionFailed), 1, None),
        Outcome::Conflict
    );
    let err = append_outcome(Err(RequestError::Timeout), 1, None);
    assert!(matches!(err, Outcome::Error { label, .. } if label == "timeout"));
}

#[test]
fn cold_projections_never_repeat_a_projector() {
    let s = scenario(ScenarioKind::ProjectCold);
    let paths = |client, seq| -> Vec<String> {
        s.cold_sums(client, seq)
            .iter()
            .map(|p| {
                assert_eq!(p.reduce, Reducer::Sum);
                assert_eq!(p.query, Query::all());
                p.path.clone().unwrap()
            })
            .collect()
    };
    let mut seen = std::collections::HashSet::new();
    for (client, seq) in [(0, 1), (0, 2), (1, 1)] {
        let request = paths(client, seq);
        assert_eq!(request.len(), COLD_PROJECTORS);
        assert!(request.into_iter().all(|p| seen.insert(p)));
    }
    assert!(seen.iter().all(|p| p.starts_with("/amount/r1/")));
}

#[test]
fn append_requests_serialize_to_the_contract_shape() {
    let req = append_once("T", "a:1".into(), "d".into());
    assert_eq!(
        serde_json::to_string(&req).unwrap(),
        r#"{"events":[{"type":"T","tags":["a:1"],"data":"d"}],"condition":{"failIfEventsMatch":{"items":[{"types":["T"],"tags":["a:1"]}]}}}"#
    );
    let req = AppendRequest {
        condition: Some(AppendCondition::after(Query::tag("a:1"), 17)),
        ..req
    };
    assert!(
        serde_json::to_string(&req).unwrap().ends_with(
            r#""condition":{"failIfEventsMatch":{"items":[{"tags":["a:1"]}]},"after":17}}"#
        ),
        "{req:?}"
    );
}

#[test]
fn primary_labels() {
    assert_eq!(
        scenario(ScenarioKind::HotKeys).primary_label(),
        LABEL_DECISION
    );
    assert_eq!(
        scenario(ScenarioKind::ParallelWrites).primary_label(),
        LABEL_APPEND_IF
    );
    assert!(scenario(ScenarioKind::Consistency).verifies());
    assert!(!scenario(ScenarioKind::Read).verifies());
}
