//! The SQLite baseline of `hearth bench`: what a user would pick instead of Hearth.
//!
//! SQLite (rusqlite, bundled) in WAL mode with `synchronous=FULL`, storing the same
//! messages sealed the same way as Hearth: the body is the text sealed with
//! [`hearth::core::seal`] (XChaCha20-Poly1305, associated data = channel id bytes
//! followed by message id bytes), one row per transaction. Message ids are Hearth's
//! own 20-byte [`MessageId`]s (big-endian HLC timestamp first), so the table's
//! primary key `(channel, id)` sorts a channel by time and "newest 50" is a
//! backwards walk of that key.

use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use hearth::core::{ChannelId, DeviceId, Hlc, MessageId, SecretKey, UserId, open, seal, writer_tag};
use rusqlite::{Connection, params};
use serde::Serialize;

/// File name of the baseline database inside its directory (SQLite adds `-wal` and `-shm`).
pub const DB_FILE: &str = "baseline.sqlite3";

/// Rows in a page, as in Hearth's "newest 50".
pub const PAGE: usize = 50;

/// How long a connection waits for the write lock another connection holds.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Rows per transaction in [`SqliteBaseline::bulk_fill`].
const BULK_BATCH: usize = 10_000;

/// Epoch written into message ids (messages start at epoch 1).
const EPOCH: u32 = 1;

/// Length of the associated data: channel id then message id.
const AAD_LEN: usize = ChannelId::LEN + MessageId::LEN;

/// What a failed row decryption names in its error.
const ROW: &str = "baseline row";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS messages (
    channel BLOB NOT NULL,
    id BLOB NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (channel, id)
) WITHOUT ROWID;";

const INSERT: &str = "INSERT INTO messages (channel, id, body) VALUES (?1, ?2, ?3)";

const NEWEST: &str = "SELECT id, body FROM messages WHERE channel = ?1 ORDER BY id DESC LIMIT ?2";

/// One connection to the baseline database, with the key that seals its rows.
///
/// Each connection has its own HLC and a random device tag in the ids it issues,
/// so several connections can post to one channel without id collisions.
pub struct SqliteBaseline {
    conn: Connection,
    key: SecretKey,
    device: DeviceId,
    hlc: Hlc,
}

/// Figures of [`run_writers`]: durable one-row transactions from concurrent writers.
#[derive(Serialize, Debug, Clone)]
pub struct WriteReport {
    /// Writer threads, each with its own connection.
    pub writers: usize,
    /// Messages posted in all.
    pub messages: usize,
    /// Wall time from the start signal until the last writer finished.
    pub secs: f64,
    /// `messages / secs`.
    pub msgs_per_sec: f64,
    /// Median latency of one post (one durable transaction), in microseconds.
    pub p50_us: f64,
    /// 99th-percentile latency of one post, in microseconds.
    pub p99_us: f64,
}

/// Latency percentiles of a repeated operation.
#[derive(Serialize, Debug, Clone)]
pub struct LatencyReport {
    /// Median, in microseconds.
    pub p50_us: f64,
    /// 99th percentile, in microseconds.
    pub p99_us: f64,
}

impl SqliteBaseline {
    /// Open (or create, with `dir` itself) the baseline database in `dir`, in WAL
    /// mode with `synchronous=FULL` and a busy timeout of [`BUSY_TIMEOUT`].
    pub fn open(dir: &Path, key: &SecretKey) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path).with_context(|| format!("opening SQLite baseline {}", path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!("SQLite baseline: journal_mode is {mode}, not wal");
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        let sync: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
        if sync != 2 {
            bail!("SQLite baseline: synchronous is {sync}, not FULL (2)");
        }
        conn.execute_batch(SCHEMA)
            .context("creating the SQLite baseline schema")?;
        Ok(SqliteBaseline {
            conn,
            key: key.clone(),
            device: DeviceId::generate()?,
            hlc: Hlc::default(),
        })
    }

    /// Post one message: seal `text` and insert it in its own (autocommit)
    /// transaction, durable when this returns.
    pub fn post(&mut self, channel: &ChannelId, text: &str) -> Result<MessageId> {
        let id = next_id(&mut self.hlc, &self.device, channel);
        let body = seal_row(&self.key, channel, &id, text)?;
        self.conn
            .prepare_cached(INSERT)?
            .execute(params![&channel.0[..], &id.0[..], body])
            .context("inserting a message into the SQLite baseline")?;
        Ok(id)
    }

    /// Insert `n` messages of `text_len` bytes ([`bench_text`] `0..n`) into
    /// `channel` quickly, in transactions of many rows: for building a large channel.
    /// Ends with a [`checkpoint`](Self::checkpoint).
    pub fn bulk_fill(&mut self, channel: &ChannelId, n: usize, text_len: usize) -> Result<()> {
        let mut done = 0;
        while done < n {
            let end = n.min(done + BULK_BATCH);
            let tx = self.conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(INSERT)?;
                for seq in done..end {
                    let text = bench_text(seq as u64, text_len);
                    let id = next_id(&mut self.hlc, &self.device, channel);
                    let body = seal_row(&self.key, channel, &id, &text)?;
                    insert.execute(params![&channel.0[..], &id.0[..], body])?;
                }
            }
            tx.commit().context("committing a bulk-fill batch")?;
            done = end;
        }
        // Settle the WAL, as a long-running database would be.
        self.checkpoint()
    }

    /// The newest `limit` messages of `channel`, newest first, decrypted.
    ///
    /// A row that fails authentication (tampered, or moved to another channel or
    /// id) is an error.
    pub fn newest_page(&mut self, channel: &ChannelId, limit: usize) -> Result<Vec<String>> {
        let limit_sql = i64::try_from(limit).context("page limit")?;
        let mut stmt = self.conn.prepare_cached(NEWEST)?;
        let mut rows = stmt.query(params![&channel.0[..], limit_sql])?;
        let mut out = Vec::with_capacity(limit.min(1024));
        while let Some(row) = rows.next()? {
            let id = row.get_ref(0)?.as_blob()?;
            let id = MessageId(
                <[u8; MessageId::LEN]>::try_from(id)
                    .map_err(|_| anyhow!("SQLite baseline: id of {} bytes", id.len()))?,
            );
            let body = row.get_ref(1)?.as_blob()?;
            let plain =
                open(&self.key, &aad(channel, &id), body, ROW).with_context(|| format!("opening message {id}"))?;
            out.push(String::from_utf8(plain).context("message text is not UTF-8")?);
        }
        Ok(out)
    }

    /// Checkpoint the WAL into the database file and truncate it, so that
    /// [`disk_bytes`] reports the settled size.
    pub fn checkpoint(&mut self) -> Result<()> {
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy != 0 {
            bail!("SQLite baseline: checkpoint blocked by another connection");
        }
        Ok(())
    }
}

/// `writers` OS threads, each with its own connection to the baseline in `dir`,
/// each posting `per_writer` messages of `text_len` bytes to one shared channel,
/// one durable transaction per message. WAL admits one writer at a time, so they
/// serialise on the write lock (waiting up to [`BUSY_TIMEOUT`]).
///
/// Texts are made and connections opened before the clock starts.
pub fn run_writers(dir: &Path, writers: usize, per_writer: usize, text_len: usize) -> Result<WriteReport> {
    if writers == 0 {
        bail!("run_writers needs at least one writer");
    }
    let key = SecretKey::generate()?;
    let channel = ChannelId::generate()?;
    let mut starts = Vec::with_capacity(writers);
    let mut handles = Vec::with_capacity(writers);
    for w in 0..writers {
        let mut db = SqliteBaseline::open(dir, &key)?;
        let texts: Vec<String> = (0..per_writer)
            .map(|i| bench_text((w * per_writer + i) as u64, text_len))
            .collect();
        let (start_tx, start_rx) = mpsc::channel::<()>();
        let handle = thread::Builder::new()
            .name(format!("sqlite-writer-{w}"))
            .spawn(move || -> Result<Vec<u64>> {
                // A dropped sender (setup failed elsewhere) aborts the writer.
                start_rx
                    .recv()
                    .map_err(|_| anyhow!("writer {w} aborted before the start"))?;
                let mut lat = Vec::with_capacity(texts.len());
                for text in &texts {
                    let t = Instant::now();
                    db.post(&channel, text)?;
                    lat.push(nanos(t.elapsed()));
                }
                Ok(lat)
            })
            .context("spawning a SQLite writer thread")?;
        starts.push(start_tx);
        handles.push(handle);
    }
    let t0 = Instant::now();
    for s in &starts {
        // A writer gone already will report its own error at join.
        let _ = s.send(());
    }
    let mut lat = Vec::with_capacity(writers * per_writer);
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(l)) => lat.extend(l),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(anyhow!("a SQLite writer thread panicked"));
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if let Some(e) = first_err {
        return Err(e);
    }
    lat.sort_unstable();
    let messages = lat.len();
    Ok(WriteReport {
        writers,
        messages,
        secs,
        msgs_per_sec: if secs > 0.0 { messages as f64 / secs } else { 0.0 },
        p50_us: percentile_us(&lat, 0.50),
        p99_us: percentile_us(&lat, 0.99),
    })
}

/// Warm "newest [`PAGE`]" queries with decryption on one connection: one
/// untimed warm-up query, then `iterations` timed ones.
pub fn page_latency(dir: &Path, key: &SecretKey, channel: &ChannelId, iterations: usize) -> Result<LatencyReport> {
    let mut db = SqliteBaseline::open(dir, key)?;
    if db.newest_page(channel, PAGE)?.is_empty() {
        bail!("SQLite baseline: channel {channel} has no messages to page");
    }
    let mut lat = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let page = db.newest_page(channel, PAGE)?;
        lat.push(nanos(t.elapsed()));
        std::hint::black_box(page);
    }
    lat.sort_unstable();
    Ok(LatencyReport {
        p50_us: percentile_us(&lat, 0.50),
        p99_us: percentile_us(&lat, 0.99),
    })
}

/// Time to open a fresh connection to the baseline in `dir` and read and decrypt
/// the newest [`PAGE`] messages of `channel`. The OS page cache is left as it is.
pub fn cold_open_newest(dir: &Path, key: &SecretKey, channel: &ChannelId) -> Result<Duration> {
    let t = Instant::now();
    let mut db = SqliteBaseline::open(dir, key)?;
    let page = db.newest_page(channel, PAGE)?;
    let elapsed = t.elapsed();
    if page.is_empty() {
        bail!("SQLite baseline: channel {channel} has no messages to page");
    }
    Ok(elapsed)
}

/// Bytes the baseline in `dir` takes on disk: database, WAL and shared-memory files.
pub fn disk_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for suffix in ["", "-wal", "-shm"] {
        let path = dir.join(format!("{DB_FILE}{suffix}"));
        match std::fs::metadata(&path) {
            Ok(m) => total += m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
        }
    }
    Ok(total)
}

/// A deterministic message text of `len` ASCII bytes (letters, digits, spaces),
/// different for every `seq`; shared with the Hearth side of the benchmark so
/// both store the same messages.
pub fn bench_text(seq: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789      ";
    let mut state = seq;
    (0..len)
        .map(|_| {
            // splitmix64
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ALPHABET[(z % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

fn next_id(hlc: &mut Hlc, device: &DeviceId, channel: &ChannelId) -> MessageId {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    MessageId::new(hlc.tick(now_ms), EPOCH, channel, writer_tag(&UserId([0; 32]), device))
}

fn aad(channel: &ChannelId, id: &MessageId) -> [u8; AAD_LEN] {
    let mut a = [0u8; AAD_LEN];
    a[..ChannelId::LEN].copy_from_slice(channel.as_bytes());
    a[ChannelId::LEN..].copy_from_slice(&id.0);
    a
}

fn seal_row(key: &SecretKey, channel: &ChannelId, id: &MessageId, text: &str) -> Result<Vec<u8>> {
    Ok(seal(key, &aad(channel, id), text.as_bytes())?)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Nearest-rank percentile of sorted nanosecond samples, in microseconds.
fn percentile_us(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted_ns.len() as f64).ceil() as usize;
    sorted_ns[rank.clamp(1, sorted_ns.len()) - 1] as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::from_bytes([7; 32])
    }

    #[test]
    fn post_then_newest_page_is_newest_first_and_decrypted() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = SqliteBaseline::open(dir.path(), &key()).unwrap();
        let a = ChannelId([1; 32]);
        let b = ChannelId([2; 32]);
        let ids: Vec<_> = ["one", "two", "three"]
            .iter()
            .map(|t| db.post(&a, t).unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        db.post(&b, "elsewhere").unwrap();
        assert_eq!(db.newest_page(&a, PAGE).unwrap(), ["three", "two", "one"]);
        assert_eq!(db.newest_page(&a, 2).unwrap(), ["three", "two"]);
        assert_eq!(db.newest_page(&b, PAGE).unwrap(), ["elsewhere"]);
        assert!(db.newest_page(&ChannelId([3; 32]), PAGE).unwrap().is_empty());
        // Another connection with the same key reads the same page.
        let mut other = SqliteBaseline::open(dir.path(), &key()).unwrap();
        assert_eq!(other.newest_page(&a, 1).unwrap(), ["three"]);
        assert!(disk_bytes(dir.path()).unwrap() > 0);
    }

    #[test]
    fn run_writers_reports_every_message() {
        let dir = tempfile::tempdir().unwrap();
        let r = run_writers(dir.path(), 2, 50, 100).unwrap();
        assert_eq!((r.writers, r.messages), (2, 100));
        assert!(r.secs > 0.0 && r.msgs_per_sec > 0.0);
        assert!(r.p50_us > 0.0 && r.p50_us <= r.p99_us);
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 100);
        let bodies: i64 = conn
            .query_row("SELECT count(*) FROM messages WHERE length(body) = 140", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(bodies, 100, "100-byte texts sealed with 40 bytes of overhead");
    }

    #[test]
    fn tampered_or_moved_rows_fail_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = SqliteBaseline::open(dir.path(), &key()).unwrap();
        let a = ChannelId([1; 32]);
        db.post(&a, "original").unwrap();
        let mut body: Vec<u8> = db
            .conn
            .query_row("SELECT body FROM messages", [], |r| r.get(0))
            .unwrap();
        body[30] ^= 1;
        db.conn.execute("UPDATE messages SET body = ?1", params![body]).unwrap();
        let err = db.newest_page(&a, PAGE).unwrap_err();
        assert!(format!("{err:#}").contains("authentication failed"), "{err:#}");

        // An intact row moved to another channel fails too: the channel is in the AAD.
        let b = ChannelId([2; 32]);
        let c = ChannelId([3; 32]);
        db.post(&b, "bound").unwrap();
        db.conn
            .execute(
                "UPDATE messages SET channel = ?1 WHERE channel = ?2",
                params![&c.0[..], &b.0[..]],
            )
            .unwrap();
        assert!(db.newest_page(&c, PAGE).is_err());
        // A wrong key fails as well.
        db.post(&b, "keyed").unwrap();
        let mut wrong = SqliteBaseline::open(dir.path(), &SecretKey::from_bytes([8; 32])).unwrap();
        assert!(wrong.newest_page(&b, PAGE).is_err());
    }

    #[test]
    fn bulk_fill_pages_and_measures() {
        let dir = tempfile::tempdir().unwrap();
        let k = key();
        let ch = ChannelId([4; 32]);
        let n = BULK_BATCH * 2 + 17;
        let mut db = SqliteBaseline::open(dir.path(), &k).unwrap();
        db.bulk_fill(&ch, n, 100).unwrap();
        let page = db.newest_page(&ch, PAGE).unwrap();
        assert_eq!(page.len(), PAGE);
        assert_eq!(page[0], bench_text(n as u64 - 1, 100));
        assert_eq!(page[PAGE - 1], bench_text((n - PAGE) as u64, 100));
        // A post after the fill is the newest.
        db.post(&ch, "latest").unwrap();
        assert_eq!(db.newest_page(&ch, 1).unwrap(), ["latest"]);
        let l = page_latency(dir.path(), &k, &ch, 20).unwrap();
        assert!(l.p50_us > 0.0 && l.p50_us <= l.p99_us);
        assert!(cold_open_newest(dir.path(), &k, &ch).unwrap() > Duration::ZERO);
        assert!(page_latency(dir.path(), &k, &ChannelId([5; 32]), 1).is_err());
        db.checkpoint().unwrap();
        let bytes = disk_bytes(dir.path()).unwrap();
        assert!(bytes > (n * 140) as u64, "{bytes}");
    }

    #[test]
    fn bench_text_is_deterministic_and_varied() {
        assert_eq!(bench_text(1, 100), bench_text(1, 100));
        assert_ne!(bench_text(1, 100), bench_text(2, 100));
        assert_eq!(bench_text(3, 100).len(), 100);
        assert!(bench_text(3, 100).is_ascii());
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let s: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_us(&s, 0.50), 50.0);
        assert_eq!(percentile_us(&s, 0.99), 99.0);
        assert_eq!(percentile_us(&[], 0.5), 0.0);
        assert_eq!(percentile_us(&[5000], 0.99), 5.0);
    }
}
