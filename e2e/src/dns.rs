//! A DNS server of the test's own on loopback: it answers A queries for the
//! names it is told about (TTL 0), so services pointed at it with
//! `SHORTFLEET_DNS_SERVER` resolve their backends as pods resolve a
//! Kubernetes headless Service, and see replicas join and leave when the
//! test changes a name's addresses. Answers NXDOMAIN for any other name.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use hickory_resolver::proto::{
    op::{Message, ResponseCode},
    rr::{RData, Record, RecordType, rdata::A},
};
use tokio::net::UdpSocket;

type Zone = Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>;

pub struct TestDns {
    pub addr: SocketAddr,
    zone: Zone,
    task: tokio::task::JoinHandle<()>,
}

impl TestDns {
    /// Serves on a free loopback UDP port until dropped.
    pub async fn start() -> std::io::Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        let zone = Zone::default();
        let task = tokio::spawn(serve(socket, zone.clone()));
        Ok(Self { addr, zone, task })
    }

    /// Adds `ip` to `name`'s addresses (a replica became ready).
    pub fn add(&self, name: &str, ip: Ipv4Addr) {
        let mut zone = self.zone.lock().unwrap();
        let addrs = zone.entry(normalise(name)).or_default();
        if !addrs.contains(&ip) {
            addrs.push(ip);
        }
    }

    /// Removes `ip` from `name`'s addresses (a replica left).
    pub fn remove(&self, name: &str, ip: Ipv4Addr) {
        if let Some(addrs) = self.zone.lock().unwrap().get_mut(&normalise(name)) {
            addrs.retain(|a| *a != ip);
        }
    }

    pub fn addresses(&self, name: &str) -> Vec<Ipv4Addr> {
        self.zone
            .lock()
            .unwrap()
            .get(&normalise(name))
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

async fn serve(socket: UdpSocket, zone: Zone) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(reply) = answer(&buf[..len], &zone) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

/// The reply to one query packet; `None` for a packet that is no query.
fn answer(packet: &[u8], zone: &Zone) -> Option<Vec<u8>> {
    let request = Message::from_vec(packet).ok()?;
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    let zone = zone.lock().unwrap();
    for query in &request.queries {
        reply.add_query(query.clone());
        match zone.get(&normalise(&query.name().to_ascii())) {
            None => reply.metadata.response_code = ResponseCode::NXDomain,
            Some(addrs) if query.query_type() == RecordType::A => {
                for ip in addrs {
                    reply.add_answer(Record::from_rdata(
                        query.name().clone(),
                        0,
                        RData::A(A(*ip)),
                    ));
                }
            }
            // The name exists but has no record of that type (AAAA…).
            Some(_) => {}
        }
    }
    reply.to_vec().ok()
}
