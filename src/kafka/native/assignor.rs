//! What the native consumer offers a consumer group, and how it assigns
//! partitions when it leads one.
//!
//! It offers two of Kafka's assignors, `cooperative-sticky` first, then
//! `roundrobin`; the coordinator picks one every member offers:
//!
//! - `cooperative-sticky` is what librdkafka's consumer (the sink's other
//!   client) offers, so a group can hold members of both kinds while it
//!   switches from one to the other, one member at a time.
//! - `roundrobin` is what the native consumer offered before it offered
//!   both, so a group of older native members keeps working with newer ones.
//!
//! The member itself is eager whatever the protocol: before it joins again it
//! commits and gives up every partition, and it tells the leader it owns
//! none. That is a valid member of a cooperative group (KIP-429): the leader
//! may give it anything, since it holds nothing.
//!
//! As the leader under `cooperative-sticky` it keeps the partitions members
//! say they own, up to a balanced share, and never moves an owned partition
//! straight to another member: a partition taken from a member over its
//! share stays unassigned in this generation; that member gives it up and
//! joins again (librdkafka does), and the next generation assigns it.

use super::group_protocol::{round_robin, topic_partitions, Plan};
use super::protocol::{Malformed, Reader};
use bytes::BufMut;
use std::collections::{BTreeMap, HashMap, HashSet};

pub const COOPERATIVE_STICKY: &str = "cooperative-sticky";
pub const ROUND_ROBIN: &str = "roundrobin";

/// The protocols this member offers, in order of preference, each with its
/// subscription metadata.
pub fn offered(topics: &[&str]) -> [(&'static str, Vec<u8>); 2] {
    let metadata = subscription(topics);
    [(COOPERATIVE_STICKY, metadata.clone()), (ROUND_ROBIN, metadata)]
}

/// Subscription v1: version i16 = 1, topics [string], user_data bytes
/// (null), owned_partitions [topic string, partitions [i32]] (none: the
/// member is eager).
pub fn subscription(topics: &[&str]) -> Vec<u8> {
    let mut b = Vec::with_capacity(2 + 4 + topics.iter().map(|t| 2 + t.len()).sum::<usize>() + 4 + 4);
    b.put_i16(1);
    b.put_i32(i32::try_from(topics.len()).unwrap_or(i32::MAX));
    for t in topics {
        let name = &t.as_bytes()[..t.len().min(i16::MAX as usize)];
        b.put_i16(name.len() as i16);
        b.put_slice(name);
    }
    b.put_i32(-1); // user data: null
    b.put_i32(0); // owned partitions: none
    b
}

/// A member's subscription: the topics, and (version 1 and later) the
/// partitions it owns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    pub topics: Vec<String>,
    pub owned: Vec<(String, Vec<i32>)>,
}

/// A subscription of any version ≥ 0; fields after the owned partitions
/// (generation, rack) are ignored.
pub fn parse_subscription(b: &[u8]) -> Result<Subscription, Malformed> {
    let mut r = Reader::new(b, "consumer Subscription");
    let version = r.i16()?;
    if version < 0 {
        return Err(r.err("negative version"));
    }
    let n = r.len()?;
    let mut topics = Vec::with_capacity(n);
    for _ in 0..n {
        topics.push(r.string()?.ok_or(r.err("null topic"))?);
    }
    let mut owned = Vec::new();
    if version >= 1 {
        r.bytes()?; // user data: the assignor's own, not read here
        owned = topic_partitions(&mut r)?;
    }
    Ok(Subscription { topics, owned })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the group chose the `{0}` assignor, which this member does not offer")]
pub struct UnknownProtocol(pub String);

/// The leader's assignment under the protocol the group chose.
pub fn assign(
    protocol: &str,
    members: &[(String, Subscription)],
    partitions: &BTreeMap<String, i32>,
) -> Result<Plan, UnknownProtocol> {
    match protocol {
        ROUND_ROBIN => {
            let topics: Vec<(String, Vec<String>)> =
                members.iter().map(|(id, s)| (id.clone(), s.topics.clone())).collect();
            Ok(round_robin(&topics, partitions))
        }
        COOPERATIVE_STICKY => Ok(cooperative_sticky(members, partitions)),
        other => Err(UnknownProtocol(other.to_string())),
    }
}

/// A member as the assignor sees it: the topics it subscribes to, and the
/// partitions it says it owns.
type Member<'a> = (HashSet<&'a str>, Vec<(&'a str, i32)>);

/// `cooperative-sticky` as the leader: balanced shares (the partitions
/// any member subscribes to, divided by the members, the remainder to those
/// owning most), each member keeps what it owns up to its share, partitions
/// nobody owns go to the least loaded member that subscribes to their topic
/// (members in id order on ties), and partitions taken from a member over
/// its share are given to nobody in this generation.
pub fn cooperative_sticky(members: &[(String, Subscription)], partitions: &BTreeMap<String, i32>) -> Plan {
    // Members by id, a member listed twice counting once.
    let mut by_id: BTreeMap<&str, Member> = BTreeMap::new();
    for (id, s) in members {
        let entry = by_id.entry(id.as_str()).or_default();
        entry.0.extend(s.topics.iter().map(String::as_str));
        entry.1.extend(s.owned.iter().flat_map(|(t, ps)| ps.iter().map(move |&p| (t.as_str(), p))));
    }
    let ids: Vec<&str> = by_id.keys().copied().collect();
    // Each member's topics, in id order (as `ids`).
    let topics_of: Vec<&HashSet<&str>> = by_id.values().map(|(t, _)| t).collect();
    let subscribed: HashSet<&str> = topics_of.iter().flat_map(|t| t.iter().copied()).collect();
    let all: Vec<(&str, i32)> = partitions
        .iter()
        .filter(|(t, _)| subscribed.contains(t.as_str()))
        .flat_map(|(t, &n)| (0..n.max(0)).map(move |p| (t.as_str(), p)))
        .collect();
    let exists: HashSet<(&str, i32)> = all.iter().copied().collect();

    // What each member owns and may keep: partitions that exist, of topics it
    // subscribes to, claimed by no member before it (in id order).
    let mut claimed: HashMap<(&str, i32), usize> = HashMap::new();
    let mut owns: Vec<Vec<(&str, i32)>> = vec![Vec::new(); ids.len()];
    for (i, (topics, owned)) in by_id.values().enumerate() {
        let mut mine: Vec<(&str, i32)> =
            owned.iter().copied().filter(|tp| exists.contains(tp) && topics.contains(tp.0)).collect();
        mine.sort_unstable();
        mine.dedup();
        for tp in mine {
            if let std::collections::hash_map::Entry::Vacant(e) = claimed.entry(tp) {
                e.insert(i);
                owns[i].push(tp);
            }
        }
    }

    // Shares: the remainder goes to the members owning most.
    let m = ids.len().max(1);
    let (base, extra) = (all.len() / m, all.len() % m);
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(owns[i].len()), i));
    let mut share = vec![base; ids.len()];
    for &i in order.iter().take(extra) {
        share[i] += 1;
    }

    let mut given: Vec<Vec<(&str, i32)>> = vec![Vec::new(); ids.len()];
    for (i, mine) in owns.iter().enumerate() {
        given[i].extend(mine.iter().take(share[i]).copied());
    }
    for &tp in all.iter().filter(|tp| !claimed.contains_key(*tp)) {
        let pick = (0..ids.len())
            .filter(|&i| topics_of[i].contains(tp.0))
            .min_by_key(|&i| (given[i].len() >= share[i], given[i].len(), i));
        if let Some(i) = pick {
            given[i].push(tp);
        }
    }

    ids.iter()
        .zip(given)
        .map(|(id, mut parts)| {
            parts.sort_unstable();
            let mut grouped: Vec<(String, Vec<i32>)> = Vec::new();
            for (t, p) in parts {
                match grouped.last_mut() {
                    Some((last, ps)) if last == t => ps.push(p),
                    _ => grouped.push((t.to_string(), vec![p])),
                }
            }
            ((*id).to_string(), grouped)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(topics: &[&str], owned: &[(&str, &[i32])]) -> Subscription {
        Subscription {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            owned: owned.iter().map(|(t, ps)| (t.to_string(), ps.to_vec())).collect(),
        }
    }

    fn counts(topics: &[(&str, i32)]) -> BTreeMap<String, i32> {
        topics.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn flat(plan: &Plan, id: &str) -> Vec<(String, i32)> {
        plan[id].iter().flat_map(|(t, ps)| ps.iter().map(move |&p| (t.clone(), p))).collect()
    }

    #[test]
    fn subscriptions_round_trip_and_read_every_version() {
        let s = parse_subscription(&subscription(&["a", "bc"])).unwrap();
        assert_eq!(s, sub(&["a", "bc"], &[]));
        // Version 0: topics and user data only.
        let v0 = [0, 0, 0, 0, 0, 1, 0, 1, b't', 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(parse_subscription(&v0).unwrap(), sub(&["t"], &[]));
        // Version 3, as librdkafka writes it: user data, owned partitions,
        // generation, rack.
        let mut v3 = vec![0, 3, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 2, 9, 9];
        v3.extend([0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3]);
        v3.extend([0, 0, 0, 7, 0xFF, 0xFF]);
        assert_eq!(parse_subscription(&v3).unwrap(), sub(&["t"], &[("t", &[0, 3])]));
        assert!(parse_subscription(&[]).is_err());
        assert!(parse_subscription(&[0xFF, 0xFF, 0, 0, 0, 0]).is_err(), "negative version");
        assert!(parse_subscription(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 5, 1]).is_err(), "truncated user data");
        assert!(parse_subscription(&[0, 0, 0x7F, 0xFF, 0xFF, 0xFF]).is_err(), "huge count");
        assert!(parse_subscription(&[0, 0, 0, 0, 0, 1, 0, 5, b'a']).is_err(), "truncated topic");
    }

    #[test]
    fn the_chosen_protocol_decides_and_an_unknown_one_is_refused() {
        let m = vec![("a".to_string(), sub(&["t"], &[]))];
        let parts = counts(&[("t", 2)]);
        assert_eq!(flat(&assign(ROUND_ROBIN, &m, &parts).unwrap(), "a").len(), 2);
        assert_eq!(flat(&assign(COOPERATIVE_STICKY, &m, &parts).unwrap(), "a").len(), 2);
        assert_eq!(assign("range", &m, &parts).unwrap_err(), UnknownProtocol("range".into()));
        assert_eq!(offered(&["t"]).map(|(name, _)| name), [COOPERATIVE_STICKY, ROUND_ROBIN]);
    }

    #[test]
    fn members_owning_nothing_get_balanced_shares() {
        // A thousand one-partition topics over three eager members.
        let names: Vec<String> = (0..1000).map(|i| format!("iot.t{i:04}.p")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let parts: BTreeMap<String, i32> = names.iter().map(|n| (n.clone(), 1)).collect();
        let m: Vec<(String, Subscription)> =
            ["c", "a", "b"].iter().map(|id| (id.to_string(), sub(&refs, &[]))).collect();
        let plan = cooperative_sticky(&m, &parts);
        let sizes: Vec<usize> = ["a", "b", "c"].iter().map(|id| flat(&plan, id).len()).collect();
        assert_eq!(sizes, vec![334, 333, 333]);
        let mut every: Vec<(String, i32)> = ["a", "b", "c"].iter().flat_map(|id| flat(&plan, id)).collect();
        every.sort();
        every.dedup();
        assert_eq!(every.len(), 1000, "each partition given once");
    }

    #[test]
    fn owned_partitions_stay_and_are_never_moved_in_one_generation() {
        // A librdkafka member owns all 6 partitions; a native member joins.
        let parts = counts(&[("t", 6)]);
        let m = vec![
            ("lib".to_string(), sub(&["t"], &[("t", &[0, 1, 2, 3, 4, 5])])),
            ("native".to_string(), sub(&["t"], &[])),
        ];
        let plan = cooperative_sticky(&m, &parts);
        let kept = flat(&plan, "lib");
        assert_eq!(kept.len(), 3, "it keeps its share");
        assert!(flat(&plan, "native").is_empty(), "the rest is revoked first, not moved: {plan:?}");
        // The next generation: the member gave the other three up.
        let m = vec![
            ("lib".to_string(), sub(&["t"], &[("t", &kept.iter().map(|(_, p)| *p).collect::<Vec<_>>())])),
            ("native".to_string(), sub(&["t"], &[])),
        ];
        let plan = cooperative_sticky(&m, &parts);
        assert_eq!(flat(&plan, "lib"), kept, "sticky");
        assert_eq!(flat(&plan, "native").len(), 3);
    }

    #[test]
    fn stale_and_double_claims_are_dropped() {
        let parts = counts(&[("t", 2)]);
        let m = vec![
            ("a".to_string(), sub(&["t"], &[("t", &[0, 7]), ("gone", &[0])])),
            ("b".to_string(), sub(&["t"], &[("t", &[0])])),
        ];
        let plan = cooperative_sticky(&m, &parts);
        assert_eq!(flat(&plan, "a"), vec![("t".to_string(), 0)], "the first claim wins; unknown partitions dropped");
        assert_eq!(flat(&plan, "b"), vec![("t".to_string(), 1)]);
    }

    #[test]
    fn different_subscriptions_only_get_their_topics() {
        let parts = counts(&[("x", 2), ("y", 2)]);
        let m = vec![("a".to_string(), sub(&["x"], &[])), ("b".to_string(), sub(&["x", "y"], &[]))];
        let plan = cooperative_sticky(&m, &parts);
        assert!(flat(&plan, "a").iter().all(|(t, _)| t == "x"));
        let total = flat(&plan, "a").len() + flat(&plan, "b").len();
        assert_eq!(total, 4, "every partition is given");
        assert!(cooperative_sticky(&[], &parts).is_empty());
    }
}
