use super::*;

fn meta(content_length: u64, piece_size: u32) -> TaskMeta {
    TaskMeta {
        id: "sha256:00".into(),
        url: "https://example.invalid/blob".into(),
        content_length,
        piece_size,
        digest: None,
        public: true,
        state: TaskState::Running,
        created_unix: 1,
        last_access_unix: 1,
    }
}

#[test]
fn layout_with_short_last_piece() {
    let m = meta(10, 4);
    assert_eq!(m.piece_count(), 3);
    assert_eq!(m.piece_len(0), Some(4));
    assert_eq!(m.piece_len(2), Some(2));
    assert_eq!(m.piece_len(3), None);
    assert_eq!(m.piece_offset(2), 8);
}

#[test]
fn layout_exact_multiple() {
    let m = meta(8, 4);
    assert_eq!(m.piece_count(), 2);
    assert_eq!(m.piece_len(1), Some(4));
    assert_eq!(m.piece_len(2), None);
}

#[test]
fn empty_content_has_no_pieces() {
    let m = meta(0, 4);
    assert_eq!(m.piece_count(), 0);
    assert_eq!(m.piece_len(0), None);
    assert_eq!(m.invalid_reason(), None);
}

#[test]
fn hostile_layouts_rejected() {
    assert_eq!(meta(10, 0).piece_count(), 0);
    assert!(meta(10, 0).invalid_reason().is_some());
    let huge = meta(u64::MAX, 1);
    assert_eq!(huge.piece_count(), u32::MAX);
    assert!(huge.invalid_reason().is_some());
    let mut no_id = meta(1, 1);
    no_id.id.clear();
    assert!(no_id.invalid_reason().is_some());
}

#[test]
fn large_offsets_do_not_overflow() {
    let m = meta(u64::from(u32::MAX) * 4, u32::MAX);
    assert_eq!(m.piece_count(), 4);
    assert_eq!(m.piece_offset(3), u64::from(u32::MAX) * 3);
    assert_eq!(m.piece_len(3), Some(u64::from(u32::MAX)));
}

#[test]
fn json_round_trip() {
    let m = meta(10, 4);
    let json = serde_json::to_vec(&m).unwrap();
    assert_eq!(serde_json::from_slice::<TaskMeta>(&json).unwrap(), m);
    let text = String::from_utf8(json).unwrap();
    assert!(text.contains("\"state\":\"running\""), "{text}");
}
