//! The topic tree and retained store match exactly like the naive filter-by-filter matcher of
//! the codec (§4.7, [MQTT-4.7.2-1]), and a delivery encodes through the codec.

use std::collections::BTreeSet;
use std::num::NonZeroU32;

use fleet_protocol::mqtt::{
    matches,
    v5::{Packet5, Properties, Property},
};
use proptest::prelude::*;

use super::*;

fn level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a", "b", "", "$s", "a$"])
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..5).prop_map(|l| l.join("/"))
}

fn filter() -> impl Strategy<Value = String> {
    let level = prop_oneof![4 => level(), 2 => Just("+")];
    (prop::collection::vec(level, 0..4), any::<bool>()).prop_filter_map(
        "a filter has at least one level",
        |(mut levels, hash)| {
            if hash {
                levels.push("#");
            }
            (!levels.is_empty()).then(|| levels.join("/"))
        },
    )
}

proptest! {
    #[test]
    fn tree_matches_like_the_naive_matcher(
        filters in prop::collection::vec((filter(), 0u64..4), 1..24),
        removed in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        topics in prop::collection::vec(topic(), 1..8),
    ) {
        let mut tree = TopicTree::default();
        let mut held = BTreeSet::new();
        for (f, s) in &filters {
            tree.insert(f, SessionId(*s), Subscription::new(QoS::AtMostOnce));
            held.insert((f.clone(), *s));
        }
        for i in removed {
            let (f, s) = &filters[i.index(filters.len())];
            let was = held.remove(&(f.clone(), *s));
            prop_assert_eq!(tree.remove(f, SessionId(*s)).is_some(), was);
        }
        prop_assert_eq!(tree.len(), held.len());
        for t in &topics {
            let mut got = Vec::new();
            tree.for_each_match(t, |s, _| got.push(s.0));
            got.sort_unstable();
            let mut want: Vec<u64> = held
                .iter()
                .filter(|(f, _)| matches(f, t))
                .map(|(_, s)| *s)
                .collect();
            want.sort_unstable();
            prop_assert_eq!(got, want, "topic {:?}", t);
        }
    }

    #[test]
    fn retained_store_matches_like_the_naive_matcher(
        stored in prop::collection::vec(topic(), 0..16),
        cleared in prop::collection::vec(topic(), 0..4),
        filters in prop::collection::vec(filter(), 1..8),
    ) {
        let mut store = RetainedStore::new(usize::MAX);
        let mut held = BTreeSet::new();
        for t in &stored {
            store.set(&Arc::new(retained_msg(t, "p", QoS::AtMostOnce)));
            held.insert(t.clone());
        }
        for t in &cleared {
            store.set(&Arc::new(retained_msg(t, "", QoS::AtMostOnce)));
            held.remove(t);
        }
        prop_assert_eq!(store.len(), held.len());
        for f in &filters {
            let mut got = Vec::new();
            store.for_each_match(f, t0(), &mut |m| got.push(m.topic.to_string()));
            got.sort();
            let want: Vec<String> = held.iter().filter(|t| matches(f, t)).cloned().collect();
            prop_assert_eq!(got, want, "filter {:?}", f);
        }
    }
}

#[test]
fn deliveries_encode_with_the_codec() {
    // A version 5 publish's properties travel to the subscriber (§3.3.2.3), with the
    // subscription identifier [MQTT-3.3.4-3] and the remaining expiry [MQTT-3.3.2-6].
    let props = [
        Property::PayloadFormatIndicator(1),
        Property::MessageExpiryInterval(60),
        Property::ContentType("text/plain"),
        Property::ResponseTopic("reply/here"),
        Property::CorrelationData(b"c1"),
        Property::UserProperty("k", "v"),
    ];
    let m = msg("t/x", "hello", qos(1)).with_v5_properties(&Properties::from_slice(&props));
    assert_eq!(m.expiry_interval, Some(60));
    let mut b = Broker::new(BrokerConfig::default());
    let h = online(&mut b, "sub", 1);
    let with_id = Subscription {
        id: NonZeroU32::new(3),
        ..sub(1)
    };
    subscribe(&mut b, h, "t/+", with_id);
    let p = online(&mut b, "pub", 2);
    let a = b.publish(p, Some(1), m, t0());
    let d = deliveries(&a, 1)[0];
    let out_props = d.properties();
    let packet = Packet5::Publish(d.publish(), Properties::from_slice(&out_props));
    let mut buf = vec![0; packet.encoded_len()];
    let n = packet.emit(&mut buf).unwrap();
    let (parsed, _) = Packet5::parse(&buf[..n], 1 << 16).unwrap().unwrap();
    let Packet5::Publish(publish, parsed_props) = parsed else {
        panic!("not a PUBLISH: {parsed:?}");
    };
    assert_eq!(
        (publish.topic, publish.payload, publish.packet_id),
        ("t/x", &b"hello"[..], Some(1))
    );
    let got: Vec<Property<'_>> = parsed_props.iter().collect();
    let mut want = props.to_vec();
    want.retain(|p| !matches!(p, Property::MessageExpiryInterval(_)));
    want.push(Property::MessageExpiryInterval(60));
    want.push(Property::SubscriptionIdentifier(3));
    assert_eq!(got, want);
    // The same message reads back as the broker's own record.
    let again = Message::from_publish(&publish).with_v5_properties(&parsed_props);
    assert_eq!(again.properties, d.message.properties);
}

#[test]
fn wills_read_from_a_connect() {
    let props = [Property::WillDelayInterval(30), Property::ContentType("x")];
    let packet = fleet_protocol::mqtt::Will {
        topic: "w/t",
        payload: b"bye",
        qos: QoS::AtLeastOnce,
        retain: true,
    };
    let w = Will::from_connect(&packet, &Properties::from_slice(&props));
    assert_eq!(w.delay, 30);
    assert_eq!((&*w.message.topic, w.message.retain), ("w/t", true));
    assert_eq!(
        w.message
            .properties
            .as_deref()
            .and_then(|p| p.content_type.as_deref()),
        Some("x")
    );
}
