//! Interfaces that come and go: the kernel's link notifications in the
//! agent's network namespace (rtnetlink, the `RTNLGRP_LINK` group), reduced
//! to what the agent acts on — an interface of some name now has some index,
//! or is gone. The agent re-attaches its programs to a configured interface
//! that comes back (a recreated veth, a NIC whose driver reloaded): the links
//! it had died with the old interface.

use futures_util::StreamExt as _;
use rtnetlink::{
    constants::RTMGRP_LINK,
    packet_core::NetlinkPayload,
    packet_route::{
        link::{LinkAttribute, LinkMessage},
        RouteNetlinkMessage,
    },
    sys::{AsyncSocket as _, SocketAddr},
};
use tokio::sync::mpsc;

/// A change to an interface, as the agent needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// Interface `name` exists with index `index`: created, renamed, or
    /// changed in any other way (up, down, MTU...).
    Present { name: String, index: u32 },
    /// Interface `name` (index `index`) was deleted.
    Gone { name: String, index: u32 },
}

/// Subscribes to link changes in this network namespace; the events arrive
/// on the receiver for as long as it is held. Must run inside the tokio
/// runtime.
pub fn watch() -> std::io::Result<mpsc::UnboundedReceiver<LinkEvent>> {
    let (mut connection, _handle, mut messages) = rtnetlink::new_connection()?;
    connection.socket_mut().socket_mut().bind(&SocketAddr::new(0, RTMGRP_LINK))?;
    let connection = tokio::spawn(connection);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            let Some(event) = event_of(message.payload) else { continue };
            if tx.send(event).is_err() {
                break;
            }
        }
        connection.abort();
    });
    Ok(rx)
}

fn event_of(payload: NetlinkPayload<RouteNetlinkMessage>) -> Option<LinkEvent> {
    let (link, present) = match payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => (link, true),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => (link, false),
        _ => return None,
    };
    let name = name_of(&link)?;
    let index = link.header.index;
    Some(if present { LinkEvent::Present { name, index } } else { LinkEvent::Gone { name, index } })
}

fn name_of(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// What the agent does about an event, given the index it last attached to
/// on each interface it serves: pure, so the decisions are tested here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkAction {
    /// A served interface is (back) with a new index: attach to it.
    Attach { name: String, index: u32 },
    /// A served interface went away: say so (its links went with it).
    Lost { name: String, index: u32 },
    /// Nothing to do (not ours, or ours and unchanged).
    None,
}

/// Decides `event` for the interfaces `served` (name → index attached to;
/// `None` while it is missing).
pub fn decide(event: &LinkEvent, served: &std::collections::BTreeMap<String, Option<u32>>) -> LinkAction {
    match event {
        LinkEvent::Present { name, index } => match served.get(name) {
            Some(known) if *known != Some(*index) => LinkAction::Attach { name: name.clone(), index: *index },
            _ => LinkAction::None,
        },
        LinkEvent::Gone { name, index } => match served.get(name) {
            // Only the interface attached to: a late notice about an older
            // one of the same name changes nothing.
            Some(Some(known)) if known == index => LinkAction::Lost { name: name.clone(), index: *index },
            _ => LinkAction::None,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn served() -> BTreeMap<String, Option<u32>> {
        [("eth0".to_owned(), Some(4)), ("eth1".to_owned(), None)].into()
    }

    #[test]
    fn a_served_interface_back_with_a_new_index_is_attached_to() {
        let s = served();
        let present = |name: &str, index| LinkEvent::Present { name: name.into(), index };
        assert_eq!(decide(&present("eth0", 9), &s), LinkAction::Attach { name: "eth0".into(), index: 9 });
        assert_eq!(decide(&present("eth1", 5), &s), LinkAction::Attach { name: "eth1".into(), index: 5 });
        // Up/down or an MTU change of the interface attached to: nothing.
        assert_eq!(decide(&present("eth0", 4), &s), LinkAction::None);
        assert_eq!(decide(&present("veth7", 12), &s), LinkAction::None);
    }

    #[test]
    fn only_the_attached_interface_going_counts_as_lost() {
        let s = served();
        let gone = |name: &str, index| LinkEvent::Gone { name: name.into(), index };
        assert_eq!(decide(&gone("eth0", 4), &s), LinkAction::Lost { name: "eth0".into(), index: 4 });
        assert_eq!(decide(&gone("eth0", 3), &s), LinkAction::None, "an older eth0");
        assert_eq!(decide(&gone("eth1", 5), &s), LinkAction::None, "already missing");
        assert_eq!(decide(&gone("lo", 1), &s), LinkAction::None);
    }
}
