//! A TCP proxy between one worker process and RabbitMQ that can delay or
//! withhold the broker's bytes (`set_latency`, `stall`), drop every
//! connection (`reset`), and reads the AMQP 0-9-1 frames going through to
//! check the ack-after-confirm rule.
//!
//! The rule: a worker acks a delivery only after the broker confirmed a
//! publish of that command's outcome (or of its dead letter) to it, on any
//! of the worker's connections (it may publish on a connection of its own).
//! The proxy records a confirm just before it forwards it to the worker,
//! and an ack as soon as it reads it from the worker, so for a correct
//! worker the confirm is always recorded first; an ack that arrives while
//! its confirm is still held back here (a stall) is a violation.

use reservation_worker::config::SecretUrl;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// `(resource_id, command_id)`: what names a command across its bodies.
pub type Key = (String, String);

/// A running proxy; dropping it closes every proxied connection.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    upstream: String,
    stalled: watch::Sender<bool>,
    /// Added to the broker-to-worker direction, in milliseconds.
    latency_ms: AtomicU64,
    /// Cancelled by `reset`; replaced by a fresh token for later connections.
    reset: Mutex<CancellationToken>,
    accepted: AtomicUsize,
    connections: Mutex<Vec<Arc<Mutex<Conn>>>>,
    /// Positively confirmed publishes, over all connections. Locked after a
    /// connection's lock, never before.
    confirmed: Mutex<Confirmed>,
}

#[derive(Default)]
struct Confirmed {
    keys: HashSet<Key>,
    /// Dead letters carry the command body rather than an event.
    bodies: HashSet<Vec<u8>>,
    /// Publishes seen but not confirmed yet, per command (for messages).
    pending: HashMap<Key, usize>,
    /// Wire position (connection, channel, sequence number) of each
    /// command's latest publish, and the highest confirmed sequence number
    /// per (connection, channel): to explain a violation.
    last_publish: HashMap<Key, (usize, u16, u64)>,
    confirmed_through: HashMap<(usize, u16), u64>,
}

/// An ack the monitor could not match with an earlier confirm.
#[derive(Debug, Clone)]
struct EarlyAck {
    /// The acked command, if its body names one.
    key: Option<Key>,
    /// Whether the broker's bytes were being held back (a stall) then.
    stalled: bool,
    /// Publishes of its outcome on the wire, awaiting their confirm, then.
    pending: usize,
    /// For the message.
    what: String,
}

/// What the frame monitor saw, over every connection so far.
#[derive(Debug, Default)]
pub struct MonitorReport {
    /// Deliveries forwarded to the worker.
    pub deliveries: usize,
    /// Publishes by the worker that the broker confirmed positively.
    pub confirmed: usize,
    /// Deliveries whose ack was checked against the confirms.
    pub acks_checked: usize,
    /// Deliveries the worker gave back (nack or reject).
    pub given_back: usize,
    /// Publishes of an outcome already published on the same connection
    /// (a retry after a missing confirm, or a duplicate delivery).
    pub republished: usize,
    /// Acks of a delivery whose outcome the broker had not confirmed, and
    /// never did, or not before a stall ended, or that was never published:
    /// the rule broken for sure. In words.
    pub violations: Vec<String>,
    /// Acks sent while the outcome's publish was on the wire awaiting its
    /// confirm, outside any stall, whose confirm did arrive afterwards: the
    /// worker took another message's confirm for its own (what lapin does
    /// when one confirm channel is published on from several threads; see
    /// `publisher_confirms_belong_to_their_own_publish`). In words.
    pub early_acks: Vec<String>,
}

impl MonitorReport {
    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: MonitorReport) {
        self.deliveries += other.deliveries;
        self.confirmed += other.confirmed;
        self.acks_checked += other.acks_checked;
        self.given_back += other.given_back;
        self.republished += other.republished;
        self.violations.extend(other.violations);
        self.early_acks.extend(other.early_acks);
    }

    /// Deliveries neither acked nor given back on their connection: the
    /// connection went away while the worker held them.
    pub fn dropped(&self) -> usize {
        self.deliveries
            .saturating_sub(self.acks_checked + self.given_back)
    }
}

impl Proxy {
    /// Listens on a free local port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            stalled: watch::channel(false).0,
            latency_ms: AtomicU64::new(0),
            reset: Mutex::new(CancellationToken::new()),
            accepted: AtomicUsize::new(0),
            connections: Mutex::new(Vec::new()),
            confirmed: Mutex::new(Confirmed::default()),
        });
        let accept = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let id = shared.accepted.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(serve(shared.clone(), client, id));
                }
            }
        });
        Proxy {
            addr,
            shared,
            accept,
        }
    }

    /// `url` (an AMQP URL) pointed at this proxy instead of its own host.
    pub fn url(&self, url: &SecretUrl) -> SecretUrl {
        let url = url.expose();
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let userinfo = authority
            .rsplit_once('@')
            .map(|(u, _)| format!("{u}@"))
            .unwrap_or_default();
        SecretUrl::new(format!("{scheme}://{userinfo}{}{path}", self.addr))
    }

    /// Delays the broker's bytes by about `latency` (a slow network): each
    /// delivery and confirm takes that long to reach the worker, so while
    /// traffic flows, the worker always has commands in hand.
    pub fn set_latency(&self, latency: Duration) {
        self.shared
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// Stops forwarding the broker's bytes (confirms, deliveries, heartbeats)
    /// until [`Proxy::release`]; the worker's bytes still flow.
    pub fn stall(&self) {
        self.shared.stalled.send_replace(true);
    }

    /// Forwards the broker's bytes again, held ones first.
    pub fn release(&self) {
        self.shared.stalled.send_replace(false);
    }

    /// Drops every proxied connection; later ones are proxied as usual.
    pub fn reset(&self) {
        let mut token = self.shared.reset.lock().unwrap();
        token.cancel();
        *token = CancellationToken::new();
    }

    /// Connections accepted so far (also the id the next one gets).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections still open.
    pub fn open(&self) -> usize {
        self.with_connections(|c| c.open as usize)
    }

    /// Whether a connection accepted as number `since` or later is open and
    /// the broker confirmed a consumer on it (`basic.consume-ok`).
    pub fn consuming_since(&self, since: usize) -> bool {
        self.with_connections(|c| (c.open && c.id >= since && c.consumers > 0) as usize) > 0
    }

    /// The commands of every delivery the worker holds right now: forwarded
    /// on a connection still open, not acked or given back.
    pub fn held(&self) -> Vec<Key> {
        let list = self.shared.connections.lock().unwrap().clone();
        list.iter()
            .flat_map(|c| {
                let c = c.lock().unwrap();
                let held: Vec<Key> = if c.open {
                    c.deliveries
                        .values()
                        .filter_map(|b| command_key(b))
                        .collect()
                } else {
                    Vec::new()
                };
                held
            })
            .collect()
    }

    /// Whether the broker's positive confirm of a publish naming `key` has
    /// been forwarded to the client.
    pub fn confirmed(&self, key: &Key) -> bool {
        self.shared.confirmed.lock().unwrap().keys.contains(key)
    }

    /// Where the latest publish naming `key` is on the wire, and how far its
    /// channel is confirmed.
    pub fn explain(&self, key: &Key) -> String {
        let c = self.shared.confirmed.lock().unwrap();
        match c.last_publish.get(key) {
            Some(&(conn, ch, seq)) => format!(
                "publish #{seq} on connection {conn} channel {ch}, confirmed through #{}",
                c.confirmed_through.get(&(conn, ch)).copied().unwrap_or(0)
            ),
            None => "never published".into(),
        }
    }

    /// Totals and violations over every connection so far.
    pub fn report(&self) -> MonitorReport {
        let mut r = MonitorReport::default();
        for c in self.shared.connections.lock().unwrap().iter() {
            let c = c.lock().unwrap();
            r.deliveries += c.delivered;
            r.confirmed += c.confirmed;
            r.acks_checked += c.acks_checked;
            r.given_back += c.given_back;
            r.republished += c.republished;
            let confirmed = self.shared.confirmed.lock().unwrap();
            for v in &c.early {
                let confirmed_later = v.key.as_ref().is_some_and(|k| confirmed.keys.contains(k));
                if !v.stalled && v.pending > 0 && confirmed_later {
                    r.early_acks.push(v.what.clone());
                } else {
                    r.violations.push(v.what.clone());
                }
            }
        }
        r
    }

    fn with_connections(&self, f: impl Fn(&Conn) -> usize) -> usize {
        let list = self.shared.connections.lock().unwrap().clone();
        list.iter().map(|c| f(&c.lock().unwrap())).sum()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.reset.lock().unwrap().cancel();
    }
}

async fn serve(shared: Arc<Shared>, client: TcpStream, id: usize) {
    let reset = shared.reset.lock().unwrap().clone();
    let Ok(upstream) = TcpStream::connect(&shared.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let conn = Arc::new(Mutex::new(Conn::new(id)));
    shared.connections.lock().unwrap().push(conn.clone());
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    tokio::select! {
        _ = from_worker(client_read, upstream_write, &conn, &shared) => {}
        _ = from_broker(upstream_read, client_write, &conn, &shared) => {}
        _ = reset.cancelled() => {}
    }
    // Both sockets close here, whichever side ended first.
    conn.lock().unwrap().open = false;
}

async fn from_worker(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    conn: &Mutex<Conn>,
    shared: &Shared,
) {
    let mut frames = Frames::new(8); // after the protocol header "AMQP\0\0\x09\x01"
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        {
            let mut c = conn.lock().unwrap();
            let stalled = *shared.stalled.borrow();
            frames.feed(&buf[..n], |f| {
                c.on_worker_frame(f, &shared.confirmed, stalled)
            });
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn from_broker(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    conn: &Mutex<Conn>,
    shared: &Shared,
) {
    let mut stalled = shared.stalled.subscribe();
    let mut frames = Frames::new(0);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // What arrives meanwhile waits in the socket and comes with the
        // next read: a delay, not a bandwidth limit.
        let latency = shared.latency_ms.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        // Held here while stalled; not reading on builds TCP back-pressure.
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        {
            // Recorded before the worker can see it.
            let mut c = conn.lock().unwrap();
            frames.feed(&buf[..n], |f| c.on_broker_frame(f, &shared.confirmed));
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// What one connection's frames said, as far as the check needs.
#[derive(Debug, Default)]
struct Conn {
    id: usize,
    open: bool,
    /// `basic.consume-ok` received.
    consumers: usize,
    /// Delivered to the worker, not yet acked or given back: by (channel, tag).
    deliveries: HashMap<(u16, u64), Vec<u8>>,
    /// Next publish sequence number of each channel in confirm mode.
    next_seq: HashMap<u16, u64>,
    /// Published, not yet confirmed: by (channel, sequence number).
    unconfirmed: HashMap<(u16, u64), Vec<u8>>,
    /// Commands whose outcome was published on this connection.
    published: HashSet<Key>,
    republished: usize,
    delivered: usize,
    confirmed: usize,
    acks_checked: usize,
    given_back: usize,
    early: Vec<EarlyAck>,
}

impl Conn {
    fn new(id: usize) -> Conn {
        Conn {
            id,
            open: true,
            ..Default::default()
        }
    }

    fn on_worker_frame(&mut self, frame: Frame, confirmed: &Mutex<Confirmed>, stalled: bool) {
        match frame {
            Frame::ChannelOpen { channel } => self.forget_channel(channel),
            Frame::ConfirmSelect { channel } => {
                self.next_seq.insert(channel, 1);
            }
            Frame::Content {
                channel,
                method: ContentMethod::Publish,
                body,
            } => {
                let seq = self.next_seq.get(&channel).copied();
                if let Some(k) = command_key(&body) {
                    let mut confirmed = confirmed.lock().unwrap();
                    *confirmed.pending.entry(k.clone()).or_default() += 1;
                    if let Some(seq) = seq {
                        confirmed
                            .last_publish
                            .insert(k.clone(), (self.id, channel, seq));
                    }
                    if !self.published.insert(k) {
                        self.republished += 1;
                    }
                }
                if let Some(seq) = seq {
                    self.unconfirmed.insert((channel, seq), body);
                    self.next_seq.insert(channel, seq + 1);
                }
            }
            Frame::Ack {
                channel,
                tag,
                multiple,
            } => {
                let confirmed = confirmed.lock().unwrap();
                for key in self.covered(channel, tag, multiple, |c| c.deliveries.keys()) {
                    self.acks_checked += 1;
                    let Some(body) = self.deliveries.remove(&key) else {
                        self.early.push(EarlyAck {
                            key: None,
                            stalled,
                            pending: 0,
                            what: format!(
                                "connection {}: ack of delivery {key:?}, which the broker never sent",
                                self.id
                            ),
                        });
                        continue;
                    };
                    let ok = command_key(&body).is_some_and(|k| confirmed.keys.contains(&k))
                        || confirmed.bodies.contains(&body);
                    if !ok {
                        let k = command_key(&body);
                        let pending = k
                            .as_ref()
                            .and_then(|k| confirmed.pending.get(k).copied())
                            .unwrap_or(0);
                        let wire = k
                            .as_ref()
                            .and_then(|k| confirmed.last_publish.get(k))
                            .map(|&(conn, ch, seq)| {
                                let through = confirmed
                                    .confirmed_through
                                    .get(&(conn, ch))
                                    .copied()
                                    .unwrap_or(0);
                                format!(
                                    "; its publish is #{seq} on connection {conn} channel {ch}, \
                                     confirmed through #{through} so far"
                                )
                            })
                            .unwrap_or_default();
                        let what = format!(
                            "connection {}: {} covered delivery {key:?} {} before the broker \
                             confirmed its outcome ({pending} publishes of it awaiting confirms{wire}{})",
                            self.id,
                            if multiple {
                                format!("ack multiple up to {tag}")
                            } else {
                                "ack".to_string()
                            },
                            String::from_utf8_lossy(&body),
                            if stalled { ", during a stall" } else { "" }
                        );
                        self.early.push(EarlyAck {
                            key: k,
                            stalled,
                            pending,
                            what,
                        });
                    }
                }
            }
            Frame::GiveBack {
                channel,
                tag,
                multiple,
            } => {
                for key in self.covered(channel, tag, multiple, |c| c.deliveries.keys()) {
                    if self.deliveries.remove(&key).is_some() {
                        self.given_back += 1;
                    }
                }
            }
            _ => {}
        }
    }

    fn on_broker_frame(&mut self, frame: Frame, confirmed: &Mutex<Confirmed>) {
        match frame {
            Frame::ConsumeOk => self.consumers += 1,
            Frame::Content {
                channel,
                method: ContentMethod::Deliver { tag },
                body,
            } => {
                self.delivered += 1;
                self.deliveries.insert((channel, tag), body);
            }
            Frame::Ack {
                channel,
                tag,
                multiple,
            } => {
                let mut confirmed = confirmed.lock().unwrap();
                let through = confirmed
                    .confirmed_through
                    .entry((self.id, channel))
                    .or_default();
                *through = (*through).max(tag);
                for key in self.covered(channel, tag, multiple, |c| c.unconfirmed.keys()) {
                    if let Some(body) = self.unconfirmed.remove(&key) {
                        self.confirmed += 1;
                        if let Some(k) = command_key(&body) {
                            if let Some(n) = confirmed.pending.get_mut(&k) {
                                *n = n.saturating_sub(1);
                            }
                            confirmed.keys.insert(k);
                        }
                        confirmed.bodies.insert(body);
                    }
                }
            }
            Frame::GiveBack {
                channel,
                tag,
                multiple,
            } => {
                // A negative confirm: the publish did not make it.
                let mut confirmed = confirmed.lock().unwrap();
                for key in self.covered(channel, tag, multiple, |c| c.unconfirmed.keys()) {
                    if let Some(k) = self.unconfirmed.remove(&key).and_then(|b| command_key(&b))
                        && let Some(n) = confirmed.pending.get_mut(&k)
                    {
                        *n = n.saturating_sub(1);
                    }
                }
            }
            Frame::ChannelClose { channel } => self.forget_channel(channel),
            _ => {}
        }
    }

    /// The (channel, tag) keys an ack or nack covers: one, or with `multiple`
    /// every one up to `tag` (all of them for tag 0).
    fn covered<'a, I>(
        &'a self,
        channel: u16,
        tag: u64,
        multiple: bool,
        keys: impl Fn(&'a Conn) -> I,
    ) -> Vec<(u16, u64)>
    where
        I: Iterator<Item = &'a (u16, u64)>,
    {
        if !multiple {
            return vec![(channel, tag)];
        }
        let mut covered: Vec<(u16, u64)> = keys(self)
            .filter(|(ch, t)| *ch == channel && (tag == 0 || *t <= tag))
            .copied()
            .collect();
        covered.sort_unstable();
        covered
    }

    fn forget_channel(&mut self, channel: u16) {
        self.deliveries.retain(|(ch, _), _| *ch != channel);
        self.unconfirmed.retain(|(ch, _), _| *ch != channel);
        self.next_seq.remove(&channel);
    }
}

/// `(resource_id, command_id)` named by a JSON command or event body.
pub fn command_key(body: &[u8]) -> Option<Key> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some((
        v.get("resource_id")?.as_str()?.to_string(),
        v.get("command_id")?.as_str()?.to_string(),
    ))
}

/// The frames the check cares about.
#[derive(Debug)]
enum Frame {
    ChannelOpen {
        channel: u16,
    },
    ChannelClose {
        channel: u16,
    },
    ConfirmSelect {
        channel: u16,
    },
    ConsumeOk,
    /// `basic.ack`: the worker's ack, or the broker's positive confirm.
    Ack {
        channel: u16,
        tag: u64,
        multiple: bool,
    },
    /// `basic.nack` / `basic.reject`: the worker giving a delivery back, or
    /// the broker's negative confirm.
    GiveBack {
        channel: u16,
        tag: u64,
        multiple: bool,
    },
    /// A content-carrying method with its whole body.
    Content {
        channel: u16,
        method: ContentMethod,
        body: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy)]
enum ContentMethod {
    Publish,
    Deliver { tag: u64 },
    Other,
}

/// A body being assembled on one channel.
struct Assembling {
    method: ContentMethod,
    size: Option<u64>,
    body: Vec<u8>,
}

/// Splits one direction of a connection into frames, however the bytes
/// are chunked.
struct Frames {
    skip: usize,
    buf: Vec<u8>,
    content: HashMap<u16, Assembling>,
}

impl Frames {
    fn new(skip: usize) -> Frames {
        Frames {
            skip,
            buf: Vec::new(),
            content: HashMap::new(),
        }
    }

    fn feed(&mut self, bytes: &[u8], mut out: impl FnMut(Frame)) {
        self.buf.extend_from_slice(bytes);
        let skipped = self.skip.min(self.buf.len());
        self.buf.drain(..skipped);
        self.skip -= skipped;
        loop {
            if self.buf.len() < 7 {
                return;
            }
            let kind = self.buf[0];
            let channel = u16::from_be_bytes([self.buf[1], self.buf[2]]);
            let size = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]);
            let end = 7 + size as usize;
            if self.buf.len() < end + 1 {
                return;
            }
            assert_eq!(self.buf[end], 0xCE, "AMQP frame-end octet");
            let payload: Vec<u8> = self.buf[7..end].to_vec();
            self.buf.drain(..=end);
            self.frame(kind, channel, &payload, &mut out);
        }
    }

    fn frame(&mut self, kind: u8, channel: u16, p: &[u8], out: &mut impl FnMut(Frame)) {
        match kind {
            // Method frame: class, method, arguments.
            1 if p.len() >= 4 => {
                let class = u16::from_be_bytes([p[0], p[1]]);
                let method = u16::from_be_bytes([p[2], p[3]]);
                let mut args = Args(&p[4..]);
                let mut expect_content = |method| {
                    self.content.insert(
                        channel,
                        Assembling {
                            method,
                            size: None,
                            body: Vec::new(),
                        },
                    );
                };
                match (class, method) {
                    (20, 10) => out(Frame::ChannelOpen { channel }),
                    (20, 40) | (20, 41) => {
                        self.content.remove(&channel);
                        out(Frame::ChannelClose { channel })
                    }
                    (85, 10) => out(Frame::ConfirmSelect { channel }),
                    (60, 21) => out(Frame::ConsumeOk),
                    (60, 80) => {
                        let tag = args.u64();
                        let multiple = args.u8() & 1 == 1;
                        out(Frame::Ack {
                            channel,
                            tag,
                            multiple,
                        })
                    }
                    (60, 120) => {
                        let tag = args.u64();
                        let multiple = args.u8() & 1 == 1;
                        out(Frame::GiveBack {
                            channel,
                            tag,
                            multiple,
                        })
                    }
                    (60, 90) => out(Frame::GiveBack {
                        channel,
                        tag: args.u64(),
                        multiple: false,
                    }),
                    (60, 40) => expect_content(ContentMethod::Publish),
                    (60, 60) => {
                        args.short_string(); // consumer tag
                        let tag = args.u64();
                        expect_content(ContentMethod::Deliver { tag })
                    }
                    // basic.return, basic.get-ok: content we do not need.
                    (60, 50) | (60, 71) => expect_content(ContentMethod::Other),
                    _ => {}
                }
            }
            // Content header: class, weight, body size, properties.
            2 if p.len() >= 12 => {
                if let Some(a) = self.content.get_mut(&channel) {
                    a.size = Some(u64::from_be_bytes(p[4..12].try_into().unwrap()));
                }
                self.complete(channel, out);
            }
            // Content body.
            3 => {
                if let Some(a) = self.content.get_mut(&channel) {
                    a.body.extend_from_slice(p);
                }
                self.complete(channel, out);
            }
            _ => {}
        }
    }

    fn complete(&mut self, channel: u16, out: &mut impl FnMut(Frame)) {
        let done = self
            .content
            .get(&channel)
            .is_some_and(|a| a.size.is_some_and(|s| a.body.len() as u64 >= s));
        if done {
            let a = self.content.remove(&channel).unwrap();
            out(Frame::Content {
                channel,
                method: a.method,
                body: a.body,
            });
        }
    }
}

/// Reads method arguments.
struct Args<'a>(&'a [u8]);

impl Args<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }

    fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    fn u64(&mut self) -> u64 {
        let b = self.take(8);
        let mut a = [0u8; 8];
        a[8 - b.len()..].copy_from_slice(b);
        u64::from_be_bytes(a)
    }

    fn short_string(&mut self) {
        let n = self.u8() as usize;
        self.take(n);
    }
}
