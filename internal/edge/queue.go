package edge

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

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
// Messages leave in batches. The range of the batch being uploaded is
// recorded before the upload, and Next hands out the same range again
// until Ack, so an upload retried after a crash writes the same object
// name with the same content instead of a second, overlapping one.
type Queue struct {
	db       *state.DB
	maxBytes int64

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
}

// OpenQueue opens the queue in db, holding at most maxBytes of topics and
// payloads.
func OpenQueue(ctx context.Context, db *state.DB, maxBytes int64) (*Queue, error) {
	if err := db.Migrate(ctx, "edge", queueMigrations); err != nil {
		return nil, err
	}
	q := &Queue{db: db, maxBytes: maxBytes}
	err := db.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(length(topic) + length(device) + length(payload)), 0) FROM edge_queue`).Scan(&q.count, &q.bytes)
	if err != nil {
		return nil, fmt.Errorf("read uplink queue size: %w", err)
	}
	return q, nil
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
	res, err := q.db.ExecContext(ctx, `INSERT INTO edge_queue (topic, device, received, payload) VALUES (?, ?, ?, ?)`,
		m.Topic, m.Device, m.Received.UnixNano(), m.Payload)
	var seq int64
	if err == nil {
		seq, err = res.LastInsertId()
	}
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
// records as pending. It returns nothing when the queue is empty.
func (q *Queue) Next(ctx context.Context, maxMsgs int, maxBytes int64) ([]Message, error) {
	var out []Message
	err := q.db.Tx(ctx, func(tx *sql.Tx) error {
		out = out[:0]
		first, last := int64(0), int64(-1)
		err := tx.QueryRowContext(ctx, `SELECT first, last FROM edge_batch WHERE id = 1`).Scan(&first, &last)
		pending := err == nil
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		var rows *sql.Rows
		if pending {
			rows, err = tx.QueryContext(ctx, `SELECT seq, topic, device, received, payload FROM edge_queue WHERE seq BETWEEN ? AND ? ORDER BY seq`, first, last)
		} else {
			rows, err = tx.QueryContext(ctx, `SELECT seq, topic, device, received, payload FROM edge_queue ORDER BY seq LIMIT ?`, maxMsgs)
		}
		if err != nil {
			return err
		}
		defer rows.Close()
		var size int64
		for rows.Next() {
			var m Message
			var ns int64
			if err := rows.Scan(&m.Seq, &m.Topic, &m.Device, &ns, &m.Payload); err != nil {
				return err
			}
			m.Received = time.Unix(0, ns).UTC()
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
		if pending && len(out) == 0 {
			// Cannot happen (Ack deletes both at once); never wedge on it.
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
	return out, nil
}

// Ack deletes the batch first..last once it is safely in the cloud.
func (q *Queue) Ack(ctx context.Context, first, last int64) error {
	var n, size int64
	err := q.db.Tx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(length(topic) + length(device) + length(payload)), 0) FROM edge_queue WHERE seq BETWEEN ? AND ?`, first, last).Scan(&n, &size); err != nil {
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
