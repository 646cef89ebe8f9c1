//! `user_data` of a submission (io_uring) or of a registered socket (epoll):
//! which connection, which incarnation of its slab slot, and which operation or
//! socket — so a completion or readiness for a freed-and-reused slot is
//! recognised and dropped.

/// The operation a completion belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Accept = 1,
    Tick,
    ClientRecv,
    ClientSend,
    BackendConnect,
    BackendRecv,
    BackendSend,
    Cancel,
    /// Closing a freed connection's socket (not tied to a live connection).
    Close,
    /// Readiness of a connection's client socket (epoll).
    Client,
    /// Readiness of a connection's backend socket (epoll).
    Backend,
    /// A pooled backend connection (key: its pool entry). io_uring: the poll
    /// for the backend's close posted on it while it is pooled or lent out;
    /// epoll: its readiness while idle (the backend closed it, or spoke unasked).
    PoolWatch,
    /// A receive linked behind a send whose success posts no completion
    /// (`Ring::push_send_then_recv`): its completion also says the send is done.
    ClientRecvAfterSend,
    BackendRecvAfterSend,
    /// The device's address, asked through the ring (X-Forwarded-For).
    PeerName,
    /// The read posted on the shared session tier's wake-up eventfd (not tied
    /// to a connection).
    TierWake,
    /// A lookup handed to the shared session tier (never an SQE: the tier's
    /// answer comes back through its inbox with this token).
    TierLookup,
    /// A backend socket opened through the ring (its connect follows).
    BackendSocket,
    /// TCP_NODELAY set on a backend socket through the ring (a completion
    /// only if it failed).
    BackendNoDelay,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Accept,
            2 => Op::Tick,
            3 => Op::ClientRecv,
            4 => Op::ClientSend,
            5 => Op::BackendConnect,
            6 => Op::BackendRecv,
            7 => Op::BackendSend,
            8 => Op::Cancel,
            9 => Op::Close,
            10 => Op::Client,
            11 => Op::Backend,
            12 => Op::PoolWatch,
            13 => Op::ClientRecvAfterSend,
            14 => Op::BackendRecvAfterSend,
            15 => Op::PeerName,
            16 => Op::TierWake,
            17 => Op::TierLookup,
            18 => Op::BackendSocket,
            19 => Op::BackendNoDelay,
            _ => return None,
        })
    }
}

/// slab key (32 bits) | generation (24 bits) | op (8 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnToken {
    pub key: u32,
    pub gen: u32,
    pub op: Op,
}

impl ConnToken {
    pub const GEN_MASK: u32 = 0x00FF_FFFF;

    pub fn new(key: usize, gen: u32, op: Op) -> ConnToken {
        ConnToken {
            key: key as u32,
            gen: gen & Self::GEN_MASK,
            op,
        }
    }

    pub fn encode(self) -> u64 {
        (u64::from(self.key) << 32) | (u64::from(self.gen & Self::GEN_MASK) << 8) | self.op as u64
    }

    pub fn decode(v: u64) -> Option<ConnToken> {
        Some(ConnToken {
            key: (v >> 32) as u32,
            gen: ((v >> 8) as u32) & Self::GEN_MASK,
            op: Op::from_u8(v as u8)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_generations_wrap() {
        // Every operation, each a distinct byte that decodes back to itself
        // (the pool's, the linked receives' and the tier's share one space).
        let all = [
            Op::Accept,
            Op::Tick,
            Op::ClientRecv,
            Op::ClientSend,
            Op::BackendConnect,
            Op::BackendRecv,
            Op::BackendSend,
            Op::Cancel,
            Op::Close,
            Op::Client,
            Op::Backend,
            Op::PoolWatch,
            Op::ClientRecvAfterSend,
            Op::BackendRecvAfterSend,
            Op::PeerName,
            Op::TierWake,
            Op::TierLookup,
            Op::BackendSocket,
            Op::BackendNoDelay,
        ];
        let mut seen = std::collections::HashSet::new();
        for op in all {
            assert!(seen.insert(op as u8), "{op:?} shares its byte");
            let t = ConnToken::new(123_456, 0x1FF_FFFF, op);
            assert_eq!(t.gen, 0xFF_FFFF);
            assert_eq!(ConnToken::decode(t.encode()), Some(t));
        }
        assert_eq!(ConnToken::decode(0), None);
        assert_eq!(ConnToken::decode(all.len() as u64 + 1), None);
    }
}
