package edge

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"convoy/internal/sealbox"
	"convoy/internal/state"
)

// testBox is a queue key that is the same on every call, so a test can
// reopen a queue.
func testBox(t testing.TB) *sealbox.Box {
	t.Helper()
	box, err := sealbox.New(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return box
}

// filesHolding returns the files under dir whose bytes contain s.
func filesHolding(t *testing.T, dir, s string) []string {
	t.Helper()
	var hits []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(s)) {
			hits = append(hits, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hits
}

func openTestQueue(t *testing.T, path string, box *sealbox.Box, log *slog.Logger) (*state.DB, *Queue) {
	t.Helper()
	ctx := context.Background()
	db, err := state.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	q, err := OpenQueue(ctx, db, box, 1<<20, log)
	if err != nil {
		db.Close()
		t.Fatal(err)
	}
	return db, q
}

func TestQueueSealedAtRest(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "edge.db")
	db, q := openTestQueue(t, path, testBox(t), slog.New(slog.DiscardHandler))
	const canary = "QUEUE-AT-REST-CANARY"
	received := time.Now().UTC()
	for i := range 3 {
		if _, err := q.Append(ctx, Message{Topic: "devices/dev-" + canary + "/telemetry/t", Device: "dev-" + canary, Received: received,
			Payload: []byte(canary + string(rune('a'+i)))}); err != nil {
			t.Fatal(err)
		}
	}
	// While the database is open (WAL and -shm present) and after closing.
	if hits := filesHolding(t, dir, canary); len(hits) > 0 {
		t.Fatalf("plaintext canary in %v", hits)
	}
	db.Close()
	if hits := filesHolding(t, dir, canary); len(hits) > 0 {
		t.Fatalf("plaintext canary in %v after close", hits)
	}

	db, q = openTestQueue(t, path, testBox(t), slog.New(slog.DiscardHandler))
	defer db.Close()
	if n, size := q.Depth(); n != 3 || size != 3*int64(len("devices/dev-"+canary+"/telemetry/t")+len("dev-"+canary)+len(canary)+1) {
		t.Fatalf("depth %d/%d after reopen", n, size)
	}
	batch, err := q.Next(ctx, 10, 1<<20)
	if err != nil || len(batch) != 3 {
		t.Fatalf("batch %v, %v", batch, err)
	}
	for i, m := range batch {
		if m.Topic != "devices/dev-"+canary+"/telemetry/t" || m.Device != "dev-"+canary || string(m.Payload) != canary+string(rune('a'+i)) || !m.Received.Equal(received) {
			t.Fatalf("message %d came back as %+v", i, m)
		}
	}
}

func TestQueueTamperedRowsQuarantined(t *testing.T) {
	ctx := context.Background()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&syncWriter{w: &logs}, nil))
	db, q := openTestQueue(t, filepath.Join(t.TempDir(), "edge.db"), testBox(t), log)
	defer db.Close()
	var seqs []int64
	for i := range 5 {
		seq, err := q.Append(ctx, Message{Topic: "devices/d1/telemetry/t", Device: "d1", Received: time.Now(), Payload: []byte{byte('a' + i)}})
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, seq)
	}
	// Row 2: one bit flipped. Rows 3 and 4: sealed values swapped, each
	// intact but bound to the other's sequence number.
	var sealed []byte
	if err := db.QueryRowContext(ctx, `SELECT sealed FROM edge_queue WHERE seq = ?`, seqs[1]).Scan(&sealed); err != nil {
		t.Fatal(err)
	}
	sealed[20] ^= 1
	if _, err := db.ExecContext(ctx, `UPDATE edge_queue SET sealed = ? WHERE seq = ?`, sealed, seqs[1]); err != nil {
		t.Fatal(err)
	}
	var s3, s4 []byte
	if err := db.QueryRowContext(ctx, `SELECT (SELECT sealed FROM edge_queue WHERE seq = ?), (SELECT sealed FROM edge_queue WHERE seq = ?)`, seqs[2], seqs[3]).Scan(&s3, &s4); err != nil {
		t.Fatal(err)
	}
	for seq, v := range map[int64][]byte{seqs[2]: s4, seqs[3]: s3} {
		if _, err := db.ExecContext(ctx, `UPDATE edge_queue SET sealed = ? WHERE seq = ?`, v, seq); err != nil {
			t.Fatal(err)
		}
	}
	batch, err := q.Next(ctx, 10, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(batch) != 2 || batch[0].Seq != seqs[0] || string(batch[0].Payload) != "a" || batch[1].Seq != seqs[4] || string(batch[1].Payload) != "e" {
		t.Fatalf("batch %+v, want rows 1 and 5 only", batch)
	}
	if n, err := q.Quarantined(ctx); err != nil || n != 3 {
		t.Fatalf("quarantined %d, %v; want 3", n, err)
	}
	for _, seq := range seqs[1:4] {
		if !strings.Contains(logs.String(), "seq="+strconv.FormatInt(seq, 10)+" ") {
			t.Errorf("quarantine of seq %d not logged:\n%s", seq, logs.String())
		}
	}
	if n, _ := q.Depth(); n != 2 {
		t.Fatalf("depth %d, want 2", n)
	}
	if err := q.Ack(ctx, batch[0].Seq, batch[1].Seq); err != nil {
		t.Fatal(err)
	}
	if n, size := q.Depth(); n != 0 || size != 0 {
		t.Fatalf("depth %d/%d after ack", n, size)
	}
	// Quarantined rows are kept, as stored, after the batch around them
	// was acknowledged.
	if n, err := q.Quarantined(ctx); err != nil || n != 3 {
		t.Fatalf("quarantined %d, %v after ack; want 3", n, err)
	}
}

func TestQueueLegacyPlaintextSealedOnOpen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "edge.db")
	const canary = "LEGACY-PLAINTEXT-CANARY"
	// An edge.db as the convoy before encryption at rest left it.
	db, err := state.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Migrate(ctx, "edge", queueMigrations[:1]); err != nil {
		t.Fatal(err)
	}
	received := time.Unix(1700000000, 123).UTC()
	for i := range 3 {
		if _, err := db.ExecContext(ctx, `INSERT INTO edge_queue (topic, device, received, payload) VALUES (?, ?, ?, ?)`,
			"devices/d1/telemetry/"+canary, "d1", received.UnixNano(), []byte(canary+string(rune('a'+i)))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO edge_batch (id, first, last) VALUES (1, 1, 2)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if len(filesHolding(t, dir, canary)) == 0 {
		t.Fatal("the legacy database does not hold the canary: the test proves nothing")
	}

	var logs bytes.Buffer
	db, q := openTestQueue(t, path, testBox(t), slog.New(slog.NewTextHandler(&syncWriter{w: &logs}, nil)))
	if !strings.Contains(logs.String(), "messages=3") {
		t.Errorf("the sealing was not logged:\n%s", logs.String())
	}
	if hits := filesHolding(t, dir, canary); len(hits) > 0 {
		t.Fatalf("plaintext canary still in %v after sealing", hits)
	}
	db.Close()
	if hits := filesHolding(t, dir, canary); len(hits) > 0 {
		t.Fatalf("plaintext canary still in %v after close", hits)
	}

	db, q = openTestQueue(t, path, testBox(t), slog.New(slog.DiscardHandler))
	defer db.Close()
	wantSize := int64(3 * (len("devices/d1/telemetry/"+canary) + len("d1") + len(canary) + 1))
	if n, size := q.Depth(); n != 3 || size != wantSize {
		t.Fatalf("depth %d/%d, want 3/%d", n, size, wantSize)
	}
	// The pending batch of the old convoy comes back as it was.
	batch, err := q.Next(ctx, 10, 1<<20)
	if err != nil || len(batch) != 2 {
		t.Fatalf("pending batch %+v, %v", batch, err)
	}
	for i, m := range batch {
		if m.Seq != int64(i+1) || m.Topic != "devices/d1/telemetry/"+canary || m.Device != "d1" || string(m.Payload) != canary+string(rune('a'+i)) || !m.Received.Equal(received) {
			t.Fatalf("legacy message %d came back as %+v", i, m)
		}
	}
	if err := q.Ack(ctx, 1, 2); err != nil {
		t.Fatal(err)
	}
	seq, err := q.Append(ctx, Message{Topic: "devices/d1/telemetry/t", Device: "d1", Received: time.Now(), Payload: []byte("new")})
	if err != nil || seq != 4 {
		t.Fatalf("seq of a new message %d, %v; want 4", seq, err)
	}
	batch, err = q.Next(ctx, 10, 1<<20)
	if err != nil || len(batch) != 2 || string(batch[0].Payload) != canary+"c" || string(batch[1].Payload) != "new" {
		t.Fatalf("batch after ack %+v, %v", batch, err)
	}
}

func TestQueueWrongKeyRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "edge.db")
	db, _ := openTestQueue(t, path, testBox(t), slog.New(slog.DiscardHandler))
	db.Close()
	other, err := sealbox.New(bytes.Repeat([]byte{8}, 32))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	db, err = state.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := OpenQueue(ctx, db, other, 1<<20, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), QueueKeyFile) {
		t.Fatalf("a queue opened with another key: %v", err)
	}
}

func TestRecordRoundTrip(t *testing.T) {
	for _, tc := range []struct{ topic, device, payload string }{
		{"devices/d1/telemetry/t", "d1", "21.5"},
		{"", "", ""},
		{"t", "d", strings.Repeat("x", 300)},
	} {
		topic, device, payload, err := decodeRecord(encodeRecord(tc.topic, tc.device, []byte(tc.payload)))
		if err != nil || topic != tc.topic || device != tc.device || string(payload) != tc.payload {
			t.Errorf("%+v came back as %q %q %q, %v", tc, topic, device, payload, err)
		}
	}
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeRecord("devices/d1/telemetry/t", "d1", []byte("x")))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		topic, device, payload, err := decodeRecord(b)
		if err != nil {
			return
		}
		t2, d2, p2, err := decodeRecord(encodeRecord(topic, device, payload))
		if err != nil || t2 != topic || d2 != device || !bytes.Equal(p2, payload) {
			t.Fatalf("%x: re-encoded record decodes differently: %v", b, err)
		}
	})
}
