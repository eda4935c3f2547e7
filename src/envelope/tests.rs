use super::*;

fn parse(s: &[u8]) -> Envelope {
    Envelope::parse(Bytes::copy_from_slice(s)).expect("valid envelope")
}

#[test]
fn items_with_and_without_length_and_no_final_newline() {
    let env = parse(b"{\"event_id\":\"abc\"}\n{\"type\":\"event\",\"length\":13}\n{\"message\":1}\n{\"type\":\"log\"}\n{\"items\":[]}");
    assert_eq!(env.event_id(), Some("abc"));
    assert_eq!(env.items.len(), 2);
    assert_eq!(env.items[0].payload().as_ref(), b"{\"message\":1}");
    assert_eq!(env.items[1].ty(), ItemType::Log);
    assert_eq!(env.items[1].payload().as_ref(), b"{\"items\":[]}");
}

#[test]
fn binary_attachment_with_newlines_and_empty_line_after() {
    let body = b"{}\n{\"type\":\"attachment\",\"length\":6}\n\x89P\nG\r\n\n\n{\"type\":\"event\"}\n{}\n";
    let env = parse(body);
    assert_eq!(env.items.len(), 2);
    assert_eq!(env.items[0].payload().as_ref(), b"\x89P\nG\r\n");
    assert_eq!(env.items[1].type_name(), "event");
}

#[test]
fn round_trip_writes_length_and_keeps_unknown_keys() {
    let env = parse(b"{\"zz\":1,\"event_id\":\"x\"}\n{\"type\":\"weird\",\"custom\":true}\nabc\n");
    let out = env.to_bytes();
    assert_eq!(
        out.as_ref(),
        b"{\"zz\":1,\"event_id\":\"x\"}\n{\"type\":\"weird\",\"custom\":true,\"length\":3}\nabc\n"
    );
    let again = Envelope::parse(out.clone()).unwrap();
    assert_eq!(again.headers, env.headers);
    assert_eq!(again.items[0].payload(), env.items[0].payload());
    assert_eq!(again.to_bytes(), out, "serializing is stable once lengths are written");
}

#[test]
fn length_is_corrected_after_payload_change() {
    let mut env = parse(b"{}\n{\"type\":\"event\",\"length\":2}\n{}\n");
    env.items[0].set_payload(Bytes::from_static(b"{\"a\":1}"));
    assert_eq!(
        env.to_bytes().as_ref(),
        b"{}\n{\"type\":\"event\",\"length\":7}\n{\"a\":1}\n"
    );
}

#[test]
fn malformed_envelopes_name_their_cause() {
    let cases: &[(&[u8], EnvelopeError)] = &[
        (b"", EnvelopeError::Empty),
        (b"\n\n", EnvelopeError::Empty),
        (b"not json\n", EnvelopeError::InvalidHeader),
        (b"[]\n", EnvelopeError::InvalidHeader),
        (b"{}\nnope\n", EnvelopeError::InvalidItemHeader { offset: 3 }),
        (b"{}\n{\"length\":1}\nx\n", EnvelopeError::MissingItemType { offset: 3 }),
        (
            b"{}\n{\"type\":\"event\",\"length\":-1}\nx\n",
            EnvelopeError::InvalidLength { offset: 3 },
        ),
        (
            b"{}\n{\"type\":\"event\",\"length\":\"3\"}\nx\n",
            EnvelopeError::InvalidLength { offset: 3 },
        ),
        (
            b"{}\n{\"type\":\"event\",\"length\":99}\nx\n",
            EnvelopeError::UnexpectedEof {
                offset: 3,
                length: 99,
                available: 2,
            },
        ),
        (
            b"{}\n{\"type\":\"event\",\"length\":1}\nxy\n",
            EnvelopeError::MissingNewline { offset: 32 },
        ),
    ];
    for (input, expected) in cases {
        let got = Envelope::parse(Bytes::copy_from_slice(input)).unwrap_err();
        assert_eq!(&got, expected, "input {:?}", String::from_utf8_lossy(input));
    }
}

#[test]
fn huge_declared_length_does_not_allocate() {
    let err = Envelope::parse(Bytes::from_static(
        b"{}\n{\"type\":\"event\",\"length\":18446744073709551615}\n",
    ))
    .unwrap_err();
    assert!(matches!(
        err,
        EnvelopeError::UnexpectedEof { .. } | EnvelopeError::InvalidLength { .. }
    ));
}

#[test]
fn header_only_envelope() {
    let env = parse(b"{}");
    assert!(env.items.is_empty());
    assert_eq!(env.to_bytes().as_ref(), b"{}\n");
}

/// The item header is written without building the map with `length`: the bytes are what serializing that map gave,
/// with `length` in the SDK's place or last, whatever the other keys hold.
#[test]
fn item_headers_are_written_as_the_map_with_length_serializes() {
    let headers = [
        r#"{"type":"event","length":3}"#,
        r#"{"type":"event","content_type":"application/json","length":99999}"#,
        r#"{"length":1,"type":"attachment","filename":"a \"b\" \\ é\n.txt"}"#,
        r#"{"type":"event"}"#,
        r#"{"type":"span","length":null,"nested":{"a":[1,2.5,-3,true,null]},"x":"\u0000"}"#,
        r#"{"type":"log","length":"7","big":18446744073709551615}"#,
    ];
    for header in headers {
        let mut item = Item::from_parts(serde_json::from_str(header).unwrap(), Bytes::from_static(b"{}"));
        for payload in [&b""[..], b"{}", &[b'x'; 1000]] {
            item.set_payload(Bytes::copy_from_slice(payload));
            let mut written = Vec::new();
            item.write_headers_with_length(&mut written);
            assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&item.headers_with_length()).unwrap(),
                "{header}"
            );
        }
    }
    let empty = Item::from_parts(serde_json::Map::new(), Bytes::from_static(b"abc"));
    let mut written = Vec::new();
    empty.write_headers_with_length(&mut written);
    assert_eq!(written, br#"{"length":3}"#);
}
