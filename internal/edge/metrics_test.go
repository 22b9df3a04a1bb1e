package edge

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"convoy/internal/tlsconf"
)

// publishQoS1 publishes payload on topic at QoS 1 and waits for the PUBACK.
func (d *probeDevice) publishQoS1(t *testing.T, id uint16, topic, payload string) {
	t.Helper()
	body := append(mqttString(topic), byte(id>>8), byte(id))
	body = append(body, payload...)
	if _, err := d.conn.Write(mqttPacket(0x32, body)); err != nil {
		t.Fatal(err)
	}
	typ, ack, err := readMQTT(d.r)
	if err != nil || typ != 0x40 || len(ack) != 2 || uint16(ack[0])<<8|uint16(ack[1]) != id {
		t.Fatalf("PUBACK %x %x %v", typ, ack, err)
	}
}

// scrape fetches /metrics over TLS verified against the broker CA and
// returns the samples by series ("name" or `name{label="value"}`).
func scrape(t *testing.T, c testCore) map[string]float64 {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: tlsconf.Client(tlsconf.Modern, c.pool, "127.0.0.1"), ForceAttemptHTTP2: true}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("https://" + c.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	samples := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", line, err)
		}
		samples[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return samples
}

// A real core with --metrics-listen: devices connect, are refused and
// publish, and a scrape over TLS sees it; the listener speaks nothing but
// TLS and only to clients that trust the broker CA.
func TestMetrics(t *testing.T) {
	c := startTestCore(t, func(o *Options) { o.MetricsListen = "127.0.0.1:0" }, "d1", "d2")
	if c.metrics == "" {
		t.Fatal("edge.env has no CONVOY_EDGE_METRICS")
	}

	d1 := connectDevice(t, c.mqtt, c.pool, c.certs["d1"], "d1", "", "")
	defer d1.conn.Close()
	// Refused: d2's certificate under d1's client ID, a will on another
	// device's topic, and a handshake without a client certificate.
	if d := dialDevice(t, c.mqtt, c.pool, c.certs["d2"], "d1", "", ""); d.code != 5 {
		t.Fatalf("client ID of another device: CONNACK %d", d.code)
	} else {
		d.conn.Close()
	}
	if d := dialDevice(t, c.mqtt, c.pool, c.certs["d2"], "d2", "devices/d1/x", "w"); d.code != 5 {
		t.Fatalf("will on another device's topic: CONNACK %d", d.code)
	} else {
		d.conn.Close()
	}
	cfg := tlsconf.Client(tlsconf.Modern, c.pool, "127.0.0.1")
	cfg.NextProtos = []string{"mqtt"}
	if conn, err := tls.Dial("tcp", c.mqtt, cfg); err == nil {
		// TLS 1.3: the server's verdict comes with its first record.
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		conn.Read(make([]byte, 1))
		conn.Close()
	}

	const n = 5
	for i := range n {
		d1.publishQoS1(t, uint16(i+1), "devices/d1/telemetry/temp", fmt.Sprintf("SECRET-PAYLOAD-%d", i))
	}
	// Denied by the policy (QoS 0: nothing comes back).
	d1.conn.Write(mqttPacket(0x30, append(mqttString("devices/d2/cmd"), "x"...)))

	var m map[string]float64
	want := map[string]func(float64) bool{
		"convoy_edge_devices_connected":                                            func(v float64) bool { return v == 1 },
		"convoy_edge_components_connected":                                         func(v float64) bool { return v == 0 },
		`convoy_edge_device_connections_refused_total{reason="identity_mismatch"}`: func(v float64) bool { return v == 1 },
		`convoy_edge_device_connections_refused_total{reason="will_topic"}`:        func(v float64) bool { return v == 1 },
		`convoy_edge_device_connections_refused_total{reason="no_certificate"}`:    func(v float64) bool { return v == 1 },
		`convoy_edge_device_connections_refused_total{reason="revoked"}`:           func(v float64) bool { return v == 0 },
		`convoy_edge_device_policy_denials_total{action="publish"}`:                func(v float64) bool { return v == 1 },
		"convoy_edge_uplink_messages_queued_total":                                 func(v float64) bool { return v == n },
		"convoy_edge_uplink_queue_messages":                                        func(v float64) bool { return v == n },
		"convoy_edge_uplink_queue_bytes":                                           func(v float64) bool { return v > 0 },
		"convoy_edge_uplink_queue_limit_bytes":                                     func(v float64) bool { return v == 1<<20 },
		"convoy_edge_uplink_quarantined_messages":                                  func(v float64) bool { return v == 0 },
		"convoy_edge_uplink_messages_exported_total":                               func(v float64) bool { return v == 0 },
		`convoy_edge_ipc_connections_refused_total{reason="uid_not_allowed"}`:      func(v float64) bool { return v == 0 },
		`convoy_edge_deployment_status{status="failed"}`:                           func(v float64) bool { return v == 0 },
		`convoy_edge_components{state="RUNNING"}`:                                  func(v float64) bool { return v == 0 },
		"convoy_edge_tls_certificate_expiry_timestamp_seconds": func(v float64) bool {
			return v > float64(time.Now().Add(24*time.Hour).Unix())
		},
		"go_goroutines": func(v float64) bool { return v > 0 },
	}
	// The handshake and policy counters move in the broker's goroutines.
	deadline := time.Now().Add(10 * time.Second)
	for {
		m = scrape(t, c)
		var bad []string
		for series, ok := range want {
			if v, found := m[series]; !found || !ok(v) {
				bad = append(bad, fmt.Sprintf("%s = %v (present %v)", series, v, found))
			}
		}
		if len(bad) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics:\n%s", strings.Join(bad, "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	for series := range m {
		if strings.Contains(series, "SECRET") || strings.Contains(series, "telemetry") || strings.Contains(series, `"d1"`) {
			t.Errorf("a series names device data: %s", series)
		}
	}

	// /healthz
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsconf.Client(tlsconf.Modern, c.pool, "127.0.0.1")}}
	resp, err := client.Get("https://" + c.metrics + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok\n" {
		t.Fatalf("/healthz: %s %q", resp.Status, body)
	}

	// Plaintext HTTP gets not one byte back.
	raw, err := net.Dial("tcp", c.metrics)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(raw, "GET /metrics HTTP/1.1\r\nHost: %s\r\n\r\n", c.metrics)
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(raw)
	raw.Close()
	var ne net.Error
	if len(got) != 0 || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("plaintext request: %q, %v; want the connection closed without a byte", got, err)
	}

	// A client that does not trust the broker CA (here: trusts the device
	// CA) does not get through the handshake.
	devicePool, _, err := deviceCAPool(c.data)
	if err != nil {
		t.Fatal(err)
	}
	if conn, err := tls.Dial("tcp", c.metrics, tlsconf.Client(tlsconf.Modern, devicePool, "127.0.0.1")); err == nil {
		conn.Close()
		t.Fatal("a client trusting only the device CA accepted the metrics listener's certificate")
	} else if !errors.As(err, new(*tls.CertificateVerificationError)) {
		t.Fatalf("untrusting client: %v, want a certificate verification error", err)
	}
	// TLS 1.2 is refused under the modern profile, as on the broker.
	old := tlsconf.Client(tlsconf.Compat, c.pool, "127.0.0.1")
	old.MaxVersion = tls.VersionTLS12
	if conn, err := tls.Dial("tcp", c.metrics, old); err == nil {
		conn.Close()
		t.Fatal("the metrics listener accepted TLS 1.2 under the modern profile")
	}
}

func TestRefusalReasons(t *testing.T) {
	for _, tc := range []struct {
		err                error
		handshake, connect string
	}{
		{errRevoked, refusedRevoked, refusedRevoked},
		{fmt.Errorf("x: %w", errIdentity), refusedIdentity, refusedIdentity},
		{fmt.Errorf("%w: %q", errWillTopic, "t"), refusedHandshake, refusedWillTopic},
		{errors.New("tls: client didn't provide a certificate"), refusedNoCertificate, refusedOther},
		{&tls.CertificateVerificationError{Err: errors.New("unknown authority")}, refusedUntrusted, refusedOther},
		{errors.New("tls: first record does not look like a TLS handshake"), refusedHandshake, refusedOther},
		{io.EOF, refusedHandshake, refusedOther},
	} {
		if got := handshakeRefusal(tc.err); got != tc.handshake {
			t.Errorf("handshakeRefusal(%v) = %s, want %s", tc.err, got, tc.handshake)
		}
		if got := connectRefusal(tc.err); got != tc.connect {
			t.Errorf("connectRefusal(%v) = %s, want %s", tc.err, got, tc.connect)
		}
	}
}
