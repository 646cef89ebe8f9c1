//! The HTTP framing of `backend_protocol = "http"` (`warmtls::conn::http`) on
//! arbitrary device and backend bytes, cut at arbitrary points: never a panic;
//! nothing reaches the backend before a whole request head was accepted; a
//! forwarded head parses, carries exactly one X-Forwarded-For and one
//! X-Forwarded-Proto (ours) and an Early-Data field exactly when we said so,
//! whatever the device sent; the response side never relays more than it got
//! plus the heads it rewrote.
#![no_main]
use libfuzzer_sys::fuzz_target;
use warmtls::conn::http::{Forwarding, Http};

fn count_fields(head: &[u8], name: &[u8]) -> usize {
    head.split(|&b| b == b'\n')
        .filter(|line| line.len() > name.len() && line[..name.len()].eq_ignore_ascii_case(name))
        .count()
}

fuzz_target!(|data: &[u8]| {
    let [flags, a, b, rest @ ..] = data else {
        return;
    };
    let device_len = (usize::from(*a) << 8 | usize::from(*b)).min(rest.len());
    let (device, backend) = rest.split_at(device_len);
    let step = 1 + usize::from(flags >> 3);
    let fwd = Forwarding {
        client: Some(std::net::Ipv4Addr::LOCALHOST.into()),
        resumed: (flags & 2 != 0).then_some(flags & 4 != 0),
        early: flags & 1 != 0,
    };
    let mut pool = warmtls::conn::BufPool::new(4, 0);
    let mut h = Http::default();
    let mut to_backend = Vec::new();
    for piece in device.chunks(step) {
        h.inbox(&mut pool).extend_from_slice(piece);
        if h.frame_request(&mut to_backend, &fwd).is_err() || h.awaiting_response() {
            break;
        }
    }
    if !h.in_exchange() {
        assert!(to_backend.is_empty(), "bytes forwarded before a whole head");
        return;
    }
    let head_end = to_backend
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a forwarded head ends")
        + 4;
    let head = &to_backend[..head_end];
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut fields);
    assert!(
        matches!(req.parse(head), Ok(httparse::Status::Complete(n)) if n == head_end),
        "our head does not parse: {:?}",
        String::from_utf8_lossy(head)
    );
    assert_eq!(count_fields(head, b"x-forwarded-for:"), 1);
    assert_eq!(count_fields(head, b"x-forwarded-proto:"), 1);
    assert_eq!(count_fields(head, b"early-data:"), usize::from(fwd.early));
    assert_eq!(
        count_fields(head, b"x-tls-resumed:"),
        usize::from(fwd.resumed.is_some())
    );
    let mut to_device = Vec::new();
    let mut fed = 0;
    for piece in backend.chunks(step) {
        fed += piece.len();
        match h.frame_response(piece, &mut to_device) {
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => break,
        }
    }
    let _ = h.backend_eof();
    // Rewritten heads add at most a Connection field and a status line's worth.
    assert!(
        to_device.len() <= fed + 64 * (1 + fed / 4),
        "relayed more than it got"
    );
});
