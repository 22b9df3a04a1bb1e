package edge

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"convoy/internal/sealbox"
	"convoy/internal/state"
)

// ErrQueueFull is returned by Append when the queue holds its maximum.
var ErrQueueFull = errors.New("uplink queue is full")

// Message is one queued telemetry message.
type Message struct {
	Seq      int64
	Topic    string
	Device   string
	Received time.Time
	Payload  []byte
}

func (m Message) size() int64 { return int64(len(m.Topic) + len(m.Device) + len(m.Payload)) }

// Queue is the durable store-and-forward queue of the uplink, in SQLite
// (WAL, synchronous=FULL): Append returns only once the message is
// committed to disk. Sequence numbers are AUTOINCREMENT, so they are never
// reused, even after the queue has been emptied: the upload object names
// are built from them.
//
// At rest, a message's topic, device and payload are one value sealed with
// AES-256-GCM (internal/sealbox) under the queue key DIR/queue.key (0600,
// created at first run, outside edge.db), bound to the row's sequence
// number and receive time as associated data: a sealed value moved to
// another row, or a row whose seq or time was edited, fails to open. The
// device name is sealed too: no query needs it. What stays clear is the
// sequence number, the receive time and the plaintext size (for the
// --max-queue-bytes accounting). A copy of edge.db, its WAL or a backup
// alone reveals no telemetry; whoever also reads queue.key (root, or the
// owner of the 0700 data directory) can open it, as the running core must.
//
// Rows queued in plaintext by an older convoy are sealed when the queue is
// opened, in one transaction with secure_delete on, followed by a WAL
// checkpoint that truncates the log, so their plaintext does not linger
// in freed pages or old WAL frames. A row that does not open (tampered,
// truncated) is neither exported nor dropped: Next moves it, as stored, to
// the edge_quarantine table, logs its sequence number at error level and
// goes on, so one bad row cannot stall the uplink. Quarantined rows stay
// until someone looks at them (sqlite3 DIR/edge.db 'SELECT * FROM
// edge_quarantine'). A queue key that does not open the queue's key check
// (wrong or replaced queue.key) is not a tampered row: OpenQueue refuses
// to start rather than quarantine everything.
//
// Messages leave in batches. The range of the batch being uploaded is
// recorded before the upload, and Next hands out the same range again
// until Ack, so an upload retried after a crash writes the same object
// name with the same content instead of a second, overlapping one.
type Queue struct {
	db       *state.DB
	box      *sealbox.Box
	maxBytes int64
	log      *slog.Logger

	mu    sync.Mutex
	bytes int64
	count int64
}

var queueMigrations = []string{
	`CREATE TABLE edge_queue (
		seq      INTEGER PRIMARY KEY AUTOINCREMENT,
		topic    TEXT NOT NULL,
		device   TEXT NOT NULL,
		received INTEGER NOT NULL,
		payload  BLOB NOT NULL);
	CREATE TABLE edge_batch (
		id    INTEGER PRIMARY KEY CHECK (id = 1),
		first INTEGER NOT NULL,
		last  INTEGER NOT NULL)`,
	// Encryption at rest: sealed holds topic, device and payload (see
	// sealRecord); the clear columns are left empty. A NULL sealed marks a
	// row of version 1, which OpenQueue seals.
	`ALTER TABLE edge_queue ADD COLUMN sealed BLOB;
	ALTER TABLE edge_queue ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
	UPDATE edge_queue SET size = length(CAST(topic AS BLOB)) + length(CAST(device AS BLOB)) + length(payload);
	CREATE TABLE edge_quarantine (
		seq         INTEGER PRIMARY KEY,
		received    INTEGER NOT NULL,
		sealed      BLOB,
		reason      TEXT NOT NULL,
		quarantined INTEGER NOT NULL);
	CREATE TABLE edge_queue_key (
		id    INTEGER PRIMARY KEY CHECK (id = 1),
		probe BLOB NOT NULL)`,
}

// QueueKeyFile is the queue key in the data directory.
const QueueKeyFile = "queue.key"

// keyProbe is sealed once into edge_queue_key, so that a wrong key is told
// apart from a tampered row.
var keyProbe = []byte("convoy edge queue key")

// rowContext is the associated data of a row's sealed value.
func rowContext(seq, receivedNS int64) []byte {
	ad := append([]byte("convoy-edge-queue-v2\x00"), make([]byte, 16)...)
	binary.BigEndian.PutUint64(ad[len(ad)-16:], uint64(seq))
	binary.BigEndian.PutUint64(ad[len(ad)-8:], uint64(receivedNS))
	return ad
}

// encodeRecord lays out topic, device and payload as
// uvarint(len topic) topic uvarint(len device) device payload.
func encodeRecord(topic, device string, payload []byte) []byte {
	out := make([]byte, 0, 2*binary.MaxVarintLen64+len(topic)+len(device)+len(payload))
	out = binary.AppendUvarint(out, uint64(len(topic)))
	out = append(out, topic...)
	out = binary.AppendUvarint(out, uint64(len(device)))
	out = append(out, device...)
	return append(out, payload...)
}

var errRecord = errors.New("malformed queue record")

func decodeRecord(b []byte) (topic, device string, payload []byte, err error) {
	field := func() (string, bool) {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return "", false
		}
		s := string(b[k : k+int(n)])
		b = b[k+int(n):]
		return s, true
	}
	var ok bool
	if topic, ok = field(); !ok {
		return "", "", nil, errRecord
	}
	if device, ok = field(); !ok {
		return "", "", nil, errRecord
	}
	return topic, device, b, nil
}

func (q *Queue) seal(seq int64, m Message) []byte {
	return q.box.Seal(encodeRecord(m.Topic, m.Device, m.Payload), rowContext(seq, m.Received.UnixNano()))
}

// open fills m's topic, device and payload from a row's sealed value.
func (q *Queue) open(m *Message, sealed []byte) error {
	plain, err := q.box.Open(sealed, rowContext(m.Seq, m.Received.UnixNano()))
	if err != nil {
		return err
	}
	m.Topic, m.Device, m.Payload, err = decodeRecord(plain)
	return err
}

// OpenQueue opens the queue in db, sealed with box (sealbox.LoadOrCreate
// of DIR/queue.key), holding at most maxBytes of topics, device names and
// payloads. It seals the rows an older convoy queued in plaintext.
func OpenQueue(ctx context.Context, db *state.DB, box *sealbox.Box, maxBytes int64, log *slog.Logger) (*Queue, error) {
	if err := db.Migrate(ctx, "edge", queueMigrations); err != nil {
		return nil, err
	}
	q := &Queue{db: db, box: box, maxBytes: maxBytes, log: log}
	if err := q.checkKey(ctx); err != nil {
		return nil, err
	}
	if err := q.sealLegacy(ctx); err != nil {
		return nil, err
	}
	err := db.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(size), 0) FROM edge_queue`).Scan(&q.count, &q.bytes)
	if err != nil {
		return nil, fmt.Errorf("read uplink queue size: %w", err)
	}
	return q, nil
}

// checkKey seals the key probe on first use and opens it afterwards.
func (q *Queue) checkKey(ctx context.Context) error {
	var probe []byte
	err := q.db.QueryRowContext(ctx, `SELECT probe FROM edge_queue_key WHERE id = 1`).Scan(&probe)
	if errors.Is(err, sql.ErrNoRows) {
		_, err = q.db.ExecContext(ctx, `INSERT INTO edge_queue_key (id, probe) VALUES (1, ?)`, q.box.Seal(keyProbe, []byte("edge_queue_key")))
		return err
	}
	if err != nil {
		return fmt.Errorf("read the queue key check: %w", err)
	}
	if _, err := q.box.Open(probe, []byte("edge_queue_key")); err != nil {
		return fmt.Errorf("%s does not open this edge.db (was it replaced?): %w", QueueKeyFile, err)
	}
	return nil
}

// sealLegacy seals, in one transaction, every row queued in plaintext by
// a convoy before encryption at rest.
func (q *Queue) sealLegacy(ctx context.Context) error {
	var n int64
	err := q.db.Tx(ctx, func(tx *sql.Tx) error {
		// Per connection; this one is the transaction's. Freed cells and
		// pages are zeroed, so the plaintext does not survive in the file.
		if _, err := tx.ExecContext(ctx, `PRAGMA secure_delete = ON`); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT seq, topic, device, received, payload FROM edge_queue WHERE sealed IS NULL ORDER BY seq`)
		if err != nil {
			return err
		}
		var legacy []Message
		for rows.Next() {
			var m Message
			var ns int64
			if err := rows.Scan(&m.Seq, &m.Topic, &m.Device, &ns, &m.Payload); err != nil {
				rows.Close()
				return err
			}
			m.Received = time.Unix(0, ns).UTC()
			legacy = append(legacy, m)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, m := range legacy {
			if _, err := tx.ExecContext(ctx, `UPDATE edge_queue SET topic = '', device = '', payload = x'', sealed = ? WHERE seq = ?`,
				q.seal(m.Seq, m), m.Seq); err != nil {
				return err
			}
		}
		n = int64(len(legacy))
		return nil
	})
	if err != nil {
		return fmt.Errorf("seal plaintext messages of an older convoy: %w", err)
	}
	if n == 0 {
		return nil
	}
	// The old row versions are still in WAL frames until a checkpoint
	// copies the new pages into the database file and truncates the log.
	if _, err := q.db.ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		return fmt.Errorf("checkpoint after sealing: %w", err)
	}
	q.log.Info("uplink: sealed messages queued in plaintext by an older convoy", "messages", n)
	return nil
}

// Depth returns the number of queued messages and their size.
func (q *Queue) Depth() (count, bytes int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.count, q.bytes
}

// Append stores m durably and returns its sequence number, or ErrQueueFull.
func (q *Queue) Append(ctx context.Context, m Message) (int64, error) {
	n := m.size()
	q.mu.Lock()
	if q.bytes+n > q.maxBytes {
		q.mu.Unlock()
		return 0, ErrQueueFull
	}
	q.bytes += n // reserve, so concurrent appends cannot overshoot
	q.count++
	q.mu.Unlock()
	// The sequence number is part of the sealed value's associated data,
	// so it is chosen before the insert: the next AUTOINCREMENT value,
	// under the write lock. Inserting it explicitly advances
	// sqlite_sequence as an automatic one would.
	var seq int64
	err := q.db.Tx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `SELECT MAX(
			COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'edge_queue'), 0),
			COALESCE((SELECT MAX(seq) FROM edge_queue), 0)) + 1`).Scan(&seq)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO edge_queue (seq, topic, device, received, payload, sealed, size) VALUES (?, '', '', ?, x'', ?, ?)`,
			seq, m.Received.UnixNano(), q.seal(seq, m), n)
		return err
	})
	if err != nil {
		q.mu.Lock()
		q.bytes -= n
		q.count--
		q.mu.Unlock()
		return 0, fmt.Errorf("queue message: %w", err)
	}
	return seq, nil
}

// Next returns the batch to upload: the pending one if an upload of it was
// started and not acknowledged, else up to maxMsgs messages (at least one,
// however large) of at most about maxBytes, oldest first, whose range it
// records as pending. It returns nothing when the queue is empty. A row
// that does not open is moved to edge_quarantine and logged, not returned.
func (q *Queue) Next(ctx context.Context, maxMsgs int, maxBytes int64) ([]Message, error) {
	var out []Message
	var bad []quarantined
	err := q.db.Tx(ctx, func(tx *sql.Tx) error {
		out, bad = out[:0], bad[:0]
		first, last := int64(0), int64(-1)
		err := tx.QueryRowContext(ctx, `SELECT first, last FROM edge_batch WHERE id = 1`).Scan(&first, &last)
		pending := err == nil
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		var rows *sql.Rows
		if pending {
			rows, err = tx.QueryContext(ctx, `SELECT seq, received, sealed, size FROM edge_queue WHERE seq BETWEEN ? AND ? ORDER BY seq`, first, last)
		} else {
			rows, err = tx.QueryContext(ctx, `SELECT seq, received, sealed, size FROM edge_queue ORDER BY seq LIMIT ?`, maxMsgs)
		}
		if err != nil {
			return err
		}
		defer rows.Close()
		var size int64
		for rows.Next() {
			var m Message
			var ns, n int64
			var sealed []byte
			if err := rows.Scan(&m.Seq, &ns, &sealed, &n); err != nil {
				return err
			}
			m.Received = time.Unix(0, ns).UTC()
			if err := q.open(&m, sealed); err != nil {
				bad = append(bad, quarantined{seq: m.Seq, received: ns, size: n, err: err})
				continue
			}
			if !pending && len(out) > 0 && size+m.size() > maxBytes {
				break
			}
			size += m.size()
			out = append(out, m)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		rows.Close()
		for _, b := range bad {
			if _, err := tx.ExecContext(ctx, `INSERT INTO edge_quarantine (seq, received, sealed, reason, quarantined)
				SELECT seq, received, sealed, ?, ? FROM edge_queue WHERE seq = ?`, b.err.Error(), time.Now().UnixNano(), b.seq); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM edge_queue WHERE seq = ?`, b.seq); err != nil {
				return err
			}
		}
		if pending && len(out) == 0 {
			// Everything pending was quarantined (or, which Ack rules
			// out, deleted): never wedge on it.
			_, err := tx.ExecContext(ctx, `DELETE FROM edge_batch WHERE id = 1`)
			return err
		}
		if pending || len(out) == 0 {
			return nil
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO edge_batch (id, first, last) VALUES (1, ?, ?)`, out[0].Seq, out[len(out)-1].Seq)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read uplink queue: %w", err)
	}
	for _, b := range bad {
		q.log.Error("uplink: queued message does not open (tampered or damaged); moved to edge_quarantine, not exported",
			"seq", b.seq, "received", time.Unix(0, b.received).UTC(), "err", b.err)
		q.mu.Lock()
		q.count--
		q.bytes -= b.size
		q.mu.Unlock()
	}
	if len(out) == 0 && len(bad) > 0 {
		// Only bad rows were read; the queue may hold good ones after them.
		return q.Next(ctx, maxMsgs, maxBytes)
	}
	return out, nil
}

// quarantined is a row Next could not open.
type quarantined struct {
	seq, received, size int64
	err                 error
}

// Quarantined returns how many rows are in edge_quarantine.
func (q *Queue) Quarantined(ctx context.Context) (int64, error) {
	var n int64
	err := q.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM edge_quarantine`).Scan(&n)
	return n, err
}

// Ack deletes the batch first..last once it is safely in the cloud.
func (q *Queue) Ack(ctx context.Context, first, last int64) error {
	var n, size int64
	err := q.db.Tx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(size), 0) FROM edge_queue WHERE seq BETWEEN ? AND ?`, first, last).Scan(&n, &size); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM edge_queue WHERE seq BETWEEN ? AND ?`, first, last); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM edge_batch WHERE id = 1`)
		return err
	})
	if err != nil {
		return fmt.Errorf("acknowledge uplink batch %d-%d: %w", first, last, err)
	}
	q.mu.Lock()
	q.count -= n
	q.bytes -= size
	q.mu.Unlock()
	return nil
}
