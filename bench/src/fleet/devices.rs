//! The fleet's devices: one compact session slot each, behind one shared
//! `ClientSessionStore`.
//!
//! rustls keeps client sessions in a `ClientSessionStore` hung off a
//! `ClientConfig`, and a session may only resume under the config (verifier)
//! that made it. A config per device costs kilobytes; instead every device shares
//! one config whose store is this table, and the worker driving a device's
//! connection names that device in a thread-local ([`CurrentDevice`]) for as long
//! as it touches the connection. A connection is driven start to finish on one
//! thread, so every store call rustls makes lands in the right slot.
//!
//! This module must never hand one device's session to another device: outside a
//! [`CurrentDevice`] scope the store stores nothing and finds nothing.
use std::cell::Cell;
use std::sync::Mutex;

use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;

/// Index of a simulated device, `0..devices`.
pub type DeviceId = u32;

thread_local! {
    static CURRENT: Cell<Option<DeviceId>> = const { Cell::new(None) };
}

/// While alive, the store calls made on this thread belong to one device.
#[must_use = "the device is only current while the guard lives"]
pub struct CurrentDevice {
    previous: Option<DeviceId>,
}

impl CurrentDevice {
    /// Make `device` the current device of this thread until the guard drops.
    pub fn enter(device: DeviceId) -> CurrentDevice {
        CurrentDevice {
            previous: CURRENT.with(|c| c.replace(Some(device))),
        }
    }
}

impl Drop for CurrentDevice {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
    }
}

fn current() -> Option<DeviceId> {
    CURRENT.with(|c| c.get())
}

/// What one device remembers between connections: at most one session, like a
/// device with room for a single ticket.
#[derive(Debug)]
enum Session {
    Tls12(Tls12ClientSessionValue),
    Tls13(Tls13ClientSessionValue),
}

/// One slot per device. Empty slots cost the slot itself (16 bytes); a session is
/// boxed so a fleet that has not connected yet stays small.
#[derive(Debug, Default)]
struct Slot {
    session: Option<Box<Session>>,
}

/// The per-device session table; implements rustls' `ClientSessionStore`.
#[derive(Debug)]
pub struct DeviceTable {
    slots: Box<[Mutex<Slot>]>,
    /// The group each device's server chose last, as its IANA code (0: none).
    kx_hints: Box<[std::sync::atomic::AtomicU16]>,
}

impl DeviceTable {
    /// A table for `devices` devices, all without a session.
    pub fn new(devices: DeviceId) -> DeviceTable {
        let n = devices as usize;
        DeviceTable {
            slots: (0..n).map(|_| Mutex::new(Slot::default())).collect(),
            kx_hints: (0..n)
                .map(|_| std::sync::atomic::AtomicU16::new(0))
                .collect(),
        }
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the table has no devices.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Devices that currently hold a session.
    pub fn with_session(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.lock().map(|s| s.session.is_some()).unwrap_or(false))
            .count()
    }

    /// Fixed bytes per device, before any session is stored.
    pub const fn fixed_bytes_per_device() -> usize {
        std::mem::size_of::<Mutex<Slot>>() + std::mem::size_of::<std::sync::atomic::AtomicU16>()
    }

    fn with_slot<R>(&self, f: impl FnOnce(&mut Slot) -> R) -> Option<R> {
        let slot = self.slots.get(current()? as usize)?;
        // A poisoned slot only means a worker panicked mid-call; the session in it
        // is still a whole value.
        let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        Some(f(&mut guard))
    }
}

impl ClientSessionStore for DeviceTable {
    fn set_kx_hint(&self, _server_name: ServerName<'static>, group: NamedGroup) {
        if let Some(h) = current().and_then(|d| self.kx_hints.get(d as usize)) {
            h.store(u16::from(group), std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn kx_hint(&self, _server_name: &ServerName<'_>) -> Option<NamedGroup> {
        let h = self.kx_hints.get(current()? as usize)?;
        match h.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            code => Some(NamedGroup::from(code)),
        }
    }

    fn set_tls12_session(&self, _server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with_slot(|s| s.session = Some(Box::new(Session::Tls12(value))));
    }

    fn tls12_session(&self, _server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.with_slot(|s| match s.session.as_deref() {
            Some(Session::Tls12(v)) => Some(v.clone()),
            _ => None,
        })
        .flatten()
    }

    fn remove_tls12_session(&self, _server_name: &ServerName<'static>) {
        self.with_slot(|s| {
            if matches!(s.session.as_deref(), Some(Session::Tls12(_))) {
                s.session = None;
            }
        });
    }

    fn insert_tls13_ticket(
        &self,
        _server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        // One ticket per device: the newest replaces the rest.
        self.with_slot(|s| s.session = Some(Box::new(Session::Tls13(value))));
    }

    fn take_tls13_ticket(
        &self,
        _server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.with_slot(|s| match s.session.take().map(|b| *b) {
            Some(Session::Tls13(v)) => Some(v),
            other => {
                s.session = other.map(Box::new);
                None
            }
        })
        .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_device_scope_nothing_is_found() {
        let t = DeviceTable::new(4);
        let name = ServerName::try_from("localhost").expect("name");
        t.set_kx_hint(name.clone(), NamedGroup::X25519);
        assert_eq!(t.kx_hint(&name), None);
        let _d = CurrentDevice::enter(2);
        assert_eq!(t.kx_hint(&name), None, "nothing was stored for device 2");
        t.set_kx_hint(name.clone(), NamedGroup::X25519);
        assert_eq!(t.kx_hint(&name), Some(NamedGroup::X25519));
        {
            let _e = CurrentDevice::enter(3);
            assert_eq!(t.kx_hint(&name), None, "device 3 sees only its own slot");
        }
        assert_eq!(t.kx_hint(&name), Some(NamedGroup::X25519), "scope restored");
    }

    #[test]
    fn a_device_out_of_range_stores_nothing() {
        let t = DeviceTable::new(1);
        let name = ServerName::try_from("localhost").expect("name");
        let _d = CurrentDevice::enter(7);
        t.set_kx_hint(name.clone(), NamedGroup::X25519);
        assert_eq!(t.kx_hint(&name), None);
    }
}
