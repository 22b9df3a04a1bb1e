package edge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"convoy/internal/state"
)

func TestDevicePolicy(t *testing.T) {
	for _, tc := range []struct {
		device, topic string
		publish, ok   bool
	}{
		{"d1", "devices/d1/telemetry/temp", true, true},
		{"d1", "devices/d1", true, true},
		{"d1", "devices/d2/telemetry/temp", true, false},
		{"d1", "devices/d10/x", true, false},
		{"d1", "broadcast/all", true, false},
		{"d1", "other/topic", true, false},
		{"d1", "$SYS/broker", true, false},
		{"d1", "devices/d1/#", false, true},
		{"d1", "devices/d1/cmd/+", false, true},
		{"d1", "broadcast/#", false, true},
		{"d1", "broadcast/fw/+", false, true},
		{"d1", "devices/d2/#", false, false},
		{"d1", "devices/+/telemetry", false, false},
		{"d1", "devices/#", false, false},
		{"d1", "#", false, false},
		{"d1", "+/d1/#", false, false},
		{"d1", "$share/g/devices/d1/#", false, false},
		{"d1", "$SYS/#", false, false},
	} {
		got := DeviceMaySubscribe(tc.device, tc.topic)
		if tc.publish {
			got = DeviceMayPublish(tc.device, tc.topic)
		}
		if got != tc.ok {
			t.Errorf("device %s publish=%v %q: allowed=%v, want %v", tc.device, tc.publish, tc.topic, got, tc.ok)
		}
	}
}

func TestClientIDMustBeCN(t *testing.T) {
	for _, tc := range []struct {
		cn, id string
		ok     bool
	}{
		{"d1", "d1", true},
		{"d1", "d2", false},
		{"d1", "", false},
		{"", "", false},
		{"d/1", "d/1", false}, // not a device name: would be two topic levels
		{"d1", "D1", false},
	} {
		if err := checkClientID(tc.cn, tc.id); (err == nil) != tc.ok {
			t.Errorf("cn %q client ID %q: err %v, want ok=%v", tc.cn, tc.id, err, tc.ok)
		}
	}
}

func TestTelemetryTopic(t *testing.T) {
	for topic, want := range map[string]string{
		"devices/d1/telemetry":        "d1",
		"devices/d1/telemetry/temp/a": "d1",
		"devices/d1/status":           "",
		"devices//telemetry/x":        "",
		"broadcast/telemetry/x":       "",
	} {
		if got, _ := telemetryTopic(topic); got != want {
			t.Errorf("telemetryTopic(%q) = %q, want %q", topic, got, want)
		}
	}
}

func TestOnceSet(t *testing.T) {
	s := newOnceSet(2)
	if !s.first("a") || s.first("a") || !s.first("b") || s.first("b") {
		t.Fatal("a key must be first exactly once")
	}
	if !s.first("c") || !s.first("a") { // full: forgets, then logs again
		t.Fatal("a full set must forget")
	}
}

// The peer-credential test runs this test binary again as a helper that
// dials the socket named by EDGE_TEST_DIAL and prints what it reads.
func TestPeerCredHelper(t *testing.T) {
	path := os.Getenv("EDGE_TEST_DIAL")
	if path == "" {
		t.Skip("helper process only")
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		fmt.Println("dial error:", err)
		os.Exit(0)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(c)
	fmt.Printf("read:%q\n", b)
	os.Exit(0)
}

func TestPeerCredListener(t *testing.T) {
	dir, err := os.MkdirTemp("", "edge-peercred-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// Reachable by another user: the directory, the socket and a copy of
	// this test binary (the original may sit in a 0700 build directory).
	os.Chmod(dir, 0o755)
	self, _ := os.Executable()
	bin := filepath.Join(dir, "edge.test")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "ipc.sock")
	logs := &syncWriter{w: &strings.Builder{}}
	log := slog.New(slog.NewTextHandler(logs, nil))
	ln, err := ListenIPC(sock, dir, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	os.Chmod(sock, 0o666) // the kernel's file permission must not be what refuses
	if fi, _ := os.Stat(sock); fi.Mode().Perm() != 0o666 {
		t.Fatalf("socket mode %v", fi.Mode())
	}
	accepted := make(chan struct{}, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			c.Write([]byte("ok"))
			c.Close()
		}
	}()
	run := func(cred *syscall.Credential) string {
		t.Helper()
		cmd := exec.Command(bin, "-test.run=^TestPeerCredHelper$")
		cmd.Env = append(os.Environ(), "EDGE_TEST_DIAL="+sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helper: %v\n%s", err, out)
		}
		return string(out)
	}

	if out := run(nil); !strings.Contains(out, `read:"ok"`) {
		t.Fatalf("same user: %s", out)
	}
	select {
	case <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("same user's connection was not accepted")
	}

	if os.Geteuid() != 0 {
		t.Skip("refusing another user needs root to run the helper as uid 65534")
	}
	out := run(&syscall.Credential{Uid: 65534, Gid: 65534})
	if !strings.Contains(out, `read:""`) {
		t.Fatalf("uid 65534 read something or could not connect: %s", out)
	}
	select {
	case <-accepted:
		t.Fatal("uid 65534's connection reached the server")
	case <-time.After(200 * time.Millisecond):
	}
	if !strings.Contains(logs.String(), "uid not allowed") || !strings.Contains(logs.String(), "uid=65534") {
		t.Fatalf("refusal not logged: %s", logs.String())
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprint(s.w)
}

func TestQueueDurable(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "edge.db")
	db, err := state.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	q, err := OpenQueue(ctx, db, testBox(t), 1<<20, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	var seqs []int64
	for i := range 5 {
		seq, err := q.Append(ctx, Message{Topic: "devices/d1/telemetry/t", Device: "d1", Received: time.Now(), Payload: []byte{byte('a' + i)}})
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, seq)
	}
	// A batch is handed out, then the process "crashes" before its ack.
	b1, err := q.Next(ctx, 3, 1<<20)
	if err != nil || len(b1) != 3 || b1[0].Seq != seqs[0] || b1[2].Seq != seqs[2] {
		t.Fatalf("first batch %v, %v", b1, err)
	}
	db.Close()

	db, err = state.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	q, err = OpenQueue(ctx, db, testBox(t), 1<<20, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := q.Depth(); n != 5 {
		t.Fatalf("depth after reopen %d, want 5", n)
	}
	// The same range comes back even though a larger batch is asked for,
	// so a retried upload has the same object name and content.
	b2, err := q.Next(ctx, 100, 1<<20)
	if err != nil || len(b2) != 3 || b2[0].Seq != b1[0].Seq || b2[2].Seq != b1[2].Seq || string(b2[1].Payload) != "b" {
		t.Fatalf("batch after reopen %v, %v", b2, err)
	}
	if err := q.Ack(ctx, b2[0].Seq, b2[2].Seq); err != nil {
		t.Fatal(err)
	}
	b3, err := q.Next(ctx, 100, 1<<20)
	if err != nil || len(b3) != 2 || b3[0].Seq != seqs[3] || string(b3[0].Payload) != "d" || string(b3[1].Payload) != "e" {
		t.Fatalf("batch after ack %v, %v", b3, err)
	}
	if err := q.Ack(ctx, b3[0].Seq, b3[1].Seq); err != nil {
		t.Fatal(err)
	}
	if b, err := q.Next(ctx, 100, 1<<20); err != nil || len(b) != 0 {
		t.Fatalf("queue not empty after acks: %v, %v", b, err)
	}
	if n, size := q.Depth(); n != 0 || size != 0 {
		t.Fatalf("depth %d/%d after acks", n, size)
	}
	// Sequence numbers are never reused, or a new batch would overwrite an
	// uploaded object.
	seq, err := q.Append(ctx, Message{Topic: "t", Device: "d1", Received: time.Now(), Payload: []byte("f")})
	if err != nil || seq <= seqs[4] {
		t.Fatalf("seq after emptying: %d (last was %d), %v", seq, seqs[4], err)
	}
}

func TestQueueFull(t *testing.T) {
	ctx := context.Background()
	db, err := state.OpenSQLite(ctx, filepath.Join(t.TempDir(), "edge.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	q, err := OpenQueue(ctx, db, testBox(t), 100, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	m := Message{Topic: "devices/d1/telemetry", Device: "d1", Payload: make([]byte, 40)} // 62 bytes
	if _, err := q.Append(ctx, m); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Append(ctx, m); err != ErrQueueFull {
		t.Fatalf("second append: %v, want ErrQueueFull", err)
	}
	b, _ := q.Next(ctx, 10, 1<<20)
	if err := q.Ack(ctx, b[0].Seq, b[0].Seq); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Append(ctx, m); err != nil {
		t.Fatalf("append after drain: %v", err)
	}
}

// A full queue never acknowledges a QoS 1 publish it did not store: MQTT 5
// gets PUBACK "quota exceeded", MQTT 3.1.1 loses its connection (no PUBACK,
// so the device sends again); QoS 0 passes through unexported.
func TestUplinkHookRefusesWhenFull(t *testing.T) {
	ctx := context.Background()
	db, err := state.OpenSQLite(ctx, filepath.Join(t.TempDir(), "edge.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	q, err := OpenQueue(ctx, db, testBox(t), 64, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	h := &uplinkHook{queue: q, log: slog.New(slog.NewTextHandler(io.Discard, nil)), wake: make(chan struct{}, 1)}
	pk := func(topic string, qos byte, size int) packets.Packet {
		return packets.Packet{TopicName: topic, Payload: make([]byte, size), FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}}
	}
	v5 := &mqtt.Client{ID: "d1"}
	v5.Properties.ProtocolVersion = 5
	v3 := &mqtt.Client{ID: "d1"}
	v3.Properties.ProtocolVersion = 4

	if _, err := h.OnPublish(v5, pk("devices/d1/status", 1, 1000)); err != nil {
		t.Fatalf("a non-telemetry topic is not queued, whatever its size: %v", err)
	}
	if _, err := h.OnPublish(v5, pk("devices/d1/telemetry/t", 1, 20)); err != nil {
		t.Fatalf("first telemetry: %v", err)
	}
	if n, _ := q.Depth(); n != 1 {
		t.Fatalf("depth %d, want 1", n)
	}
	if _, err := h.OnPublish(v5, pk("devices/d1/telemetry/t", 1, 20)); !errors.Is(err, packets.ErrQuotaExceeded) {
		t.Fatalf("MQTT 5 QoS 1 into a full queue: %v, want quota exceeded", err)
	}
	if _, err := h.OnPublish(v3, pk("devices/d1/telemetry/t", 1, 20)); !errors.Is(err, packets.ErrRejectPacket) || v3.StopCause() == nil {
		t.Fatalf("MQTT 3.1.1 QoS 1 into a full queue: err %v, stopped %v; want rejected and disconnected", err, v3.StopCause())
	}
	if _, err := h.OnPublish(v5, pk("devices/d1/telemetry/t", 0, 20)); err != nil {
		t.Fatalf("QoS 0 into a full queue: %v", err)
	}
	if n, _ := q.Depth(); n != 1 {
		t.Fatalf("depth %d after refusals, want 1", n)
	}
}

func TestQuietPacketsDropsPayloads(t *testing.T) {
	var buf strings.Builder
	log := slog.New(quietPackets{slog.NewTextHandler(&buf, nil)}).With("component", "mqtt")
	log.Warn("error processing packet", "client", "d1", "pk", packets.Packet{Payload: []byte("SECRET-PAYLOAD")})
	if out := buf.String(); strings.Contains(out, "SECRET") || !strings.Contains(out, "client=d1") || !strings.Contains(out, "component=mqtt") {
		t.Fatalf("log line: %s", out)
	}
}

func TestConnectDeadline(t *testing.T) {
	defer func(d time.Duration) { connectTimeout = d }(connectTimeout)
	connectTimeout = 100 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := connectDeadline{ln}.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	_, err = s.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); !ok || !ne.Timeout() || time.Since(start) > 5*time.Second {
		t.Fatalf("a silent peer: read returned %v after %s, want a timeout", err, time.Since(start))
	}
}
