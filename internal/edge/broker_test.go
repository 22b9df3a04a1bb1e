package edge

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"convoy/internal/tlsconf"
)

// Tests of a running core's broker over real mutual TLS, with MQTT 3.1.1
// packets built by hand (so that a test controls every flag).

// mqttString is a length-prefixed MQTT UTF-8 string.
func mqttString(s string) []byte {
	b := make([]byte, 2, 2+len(s))
	binary.BigEndian.PutUint16(b, uint16(len(s)))
	return append(b, s...)
}

// mqttPacket frames a control packet: fixed header byte, remaining length.
func mqttPacket(first byte, body []byte) []byte {
	out := []byte{first}
	n := len(body)
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		out = append(out, d)
		if n == 0 {
			break
		}
	}
	return append(out, body...)
}

// readMQTT reads one control packet: its type byte and its body.
func readMQTT(r *bufio.Reader) (byte, []byte, error) {
	first, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mul := 0, 1
	for {
		d, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(d&0x7f) * mul
		mul *= 128
		if d&0x80 == 0 {
			break
		}
	}
	body := make([]byte, n)
	_, err = io.ReadFull(r, body)
	return first, body, err
}

type probeDevice struct {
	conn *tls.Conn
	r    *bufio.Reader
	code byte // the CONNACK's return code
}

// dialDevice dials the core as device name (MQTT 3.1.1), with a will on
// willTopic when it is not "", and reads the CONNACK's return code.
func dialDevice(t *testing.T, addr string, pool *x509.CertPool, cert tls.Certificate, name, willTopic, willMsg string) *probeDevice {
	t.Helper()
	cfg := tlsconf.WithClientCertificate(tlsconf.Client(tlsconf.Modern, pool, "127.0.0.1"), cert)
	cfg.NextProtos = []string{"mqtt"}
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	flags := byte(0x02) // clean session
	payload := mqttString(name)
	if willTopic != "" {
		flags |= 0x04 // will, QoS 0, not retained
		payload = append(payload, mqttString(willTopic)...)
		payload = append(payload, mqttString(willMsg)...)
	}
	body := append(mqttString("MQTT"), 4, flags, 0, 60)
	body = append(body, payload...)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(mqttPacket(0x10, body)); err != nil {
		t.Fatal(err)
	}
	d := &probeDevice{conn: c, r: bufio.NewReader(c)}
	typ, ack, err := readMQTT(d.r)
	if err != nil || typ != 0x20 || len(ack) != 2 {
		t.Fatalf("%s: CONNACK %x %x %v", name, typ, ack, err)
	}
	d.code = ack[1]
	return d
}

// connectDevice is dialDevice for a CONNECT that must be accepted.
func connectDevice(t *testing.T, addr string, pool *x509.CertPool, cert tls.Certificate, name, willTopic, willMsg string) *probeDevice {
	t.Helper()
	d := dialDevice(t, addr, pool, cert, name, willTopic, willMsg)
	if d.code != 0 {
		t.Fatalf("%s: CONNACK return code %d", name, d.code)
	}
	return d
}

func (d *probeDevice) subscribe(t *testing.T, filter string) {
	t.Helper()
	body := append([]byte{0, 1}, mqttString(filter)...)
	body = append(body, 0)
	if _, err := d.conn.Write(mqttPacket(0x82, body)); err != nil {
		t.Fatal(err)
	}
	typ, ack, err := readMQTT(d.r)
	if err != nil || typ != 0x90 || len(ack) != 3 || ack[2] >= 0x80 {
		t.Fatalf("SUBACK %x %x %v", typ, ack, err)
	}
}

// startCore runs a real edge core (Run) on 127.0.0.1 with two devices, and
// returns the broker's address, the broker CA pool and the devices' keys.
func startCore(t *testing.T, names ...string) (string, *x509.CertPool, map[string]tls.Certificate) {
	t.Helper()
	c := startTestCore(t, nil, names...)
	return c.mqtt, c.pool, c.certs
}

// testCore is a core started by startTestCore.
type testCore struct {
	data    string // its data directory
	mqtt    string // the broker's address
	metrics string // the metrics listener's address, if any
	pool    *x509.CertPool
	certs   map[string]tls.Certificate
}

// startTestCore is startCore with its options changed by configure (if
// not nil) before Run.
func startTestCore(t *testing.T, configure func(*Options), names ...string) testCore {
	t.Helper()
	dir := t.TempDir()
	data := filepath.Join(dir, "edge")
	if err := Init(data, Identity{Name: "core"}); err != nil {
		t.Fatal(err)
	}
	certs := map[string]tls.Certificate{}
	for _, n := range names {
		if _, err := AddDevice(data, n, filepath.Join(dir, "out"), time.Hour); err != nil {
			t.Fatal(err)
		}
		certs[n] = loadDevice(t, filepath.Join(dir, "out"), n)
	}
	brokerCA, err := loadCA(serverCADir(data))
	if err != nil {
		t.Fatal(err)
	}
	o := Options{DataDir: data, Listen: "127.0.0.1:0", Profile: tlsconf.Modern,
		IPCSocket: filepath.Join(dir, "ipc.sock"), MaxQueueBytes: 1 << 20, Logger: slog.New(slog.DiscardHandler)}
	if configure != nil {
		configure(&o)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(data, EnvFile))
		if err == nil {
			c := testCore{data: data, pool: brokerCA.Pool(), certs: certs}
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "export CONVOY_EDGE_MQTT='"); ok {
					c.mqtt = strings.TrimSuffix(v, "'")
				}
				if v, ok := strings.CutPrefix(line, "export CONVOY_EDGE_METRICS='"); ok {
					c.metrics = strings.TrimSuffix(v, "'")
				}
			}
			if c.mqtt != "" {
				return c
			}
		}
		select {
		case err := <-done:
			t.Fatalf("core stopped: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("core not ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A device's will (Last Will and Testament) is published by the broker
// when the device goes away uncleanly, and mochi publishes it without
// asking the ACL hook (server.go sendLWT). So the device policy holds the
// will topic at CONNECT: a will on another device's topic or on
// broadcast/# is refused with "not authorized" (and never delivered),
// while a will on the device's own topics is accepted.
func TestWillTopicHeldToDevicePolicy(t *testing.T) {
	addr, pool, certs := startCore(t, "d1", "d2")
	victim := connectDevice(t, addr, pool, certs["d2"], "d2", "", "")
	defer victim.conn.Close()
	victim.subscribe(t, "devices/d2/#")
	victim.subscribe(t, "broadcast/#")

	for _, topic := range []string{"devices/d2/commands", "broadcast/firmware", "devices/d1x/status", "$SYS/x"} {
		attacker := dialDevice(t, addr, pool, certs["d1"], "d1", topic, "from-d1")
		if attacker.code != 5 {
			t.Errorf("a will on %s: CONNACK return code %d, want 5 (not authorized)", topic, attacker.code)
		}
		attacker.conn.NetConn().Close() // no DISCONNECT: a broker would send the will
	}
	victim.conn.SetDeadline(time.Now().Add(2 * time.Second))
	if typ, body, err := readMQTT(victim.r); err == nil && typ&0xf0 == 0x30 {
		t.Fatalf("a will of d1 was delivered to d2: %q", body)
	}

	own := connectDevice(t, addr, pool, certs["d1"], "d1", "devices/d1/status", "offline")
	own.conn.Close()
}

// Control: a plain PUBLISH by d1 on d2's topic is refused (not delivered).
func TestPublishOnOtherDeviceRefused(t *testing.T) {
	addr, pool, certs := startCore(t, "d1", "d2")
	victim := connectDevice(t, addr, pool, certs["d2"], "d2", "", "")
	defer victim.conn.Close()
	victim.subscribe(t, "devices/d2/#")
	attacker := connectDevice(t, addr, pool, certs["d1"], "d1", "", "")
	defer attacker.conn.Close()
	attacker.conn.Write(mqttPacket(0x30, append(mqttString("devices/d2/commands"), "x"...)))
	victim.conn.SetDeadline(time.Now().Add(time.Second))
	if typ, body, err := readMQTT(victim.r); err == nil && typ&0xf0 == 0x30 {
		t.Fatalf("d1's PUBLISH on devices/d2/commands delivered: %q", body)
	}
}
