package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"convoy/internal/pki"
	"convoy/internal/tlsconf"
	"convoy/test/e2e/harness"
)

// The edge core with real clients: mosquitto devices over mutual TLS, a
// component on the IPC socket, and a real cloud convoy that receives the
// telemetry in S3 — while online, and after the cloud was down and the
// edge was killed with SIGKILL in between. tshark watches the device and
// cloud ports for the canaries, and the canaries queued while the cloud is
// down are in no file of the edge's data directory.
func TestEdgeEndToEnd(t *testing.T) {
	pub := harness.Tool(t, "mosquitto_pub")
	sub := harness.Tool(t, "mosquitto_sub")
	tshark := harness.Tool(t, "tshark")
	curl := harness.Tool(t, "curl")
	bin := harness.Binary(t)
	ctx := harness.Context(t)

	cloudAddr := freeAddr(t)
	cloud := harness.Start(t, harness.Options{Listen: cloudAddr})
	if _, err := cloud.S3(t).CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String("telemetry")}); err != nil {
		t.Fatal(err)
	}
	// The edge keeps its own copy, as a device elsewhere would: convoy up
	// removes convoy.env when it stops.
	envData, err := os.ReadFile(filepath.Join(cloud.DataDir, "convoy.env"))
	if err != nil {
		t.Fatal(err)
	}
	cloudEnv := writeFile(t, filepath.Join(t.TempDir(), "cloud.env"), envData)

	tmp := t.TempDir()
	data, certs := filepath.Join(tmp, "edge"), filepath.Join(tmp, "certs")
	runCmd(t, bin, "edge", "init", "--data", data, "--name", "core1")
	out := runCmd(t, bin, "edge", "devices", "add", "d1", "--data", data, "--out", certs)
	if !strings.Contains(out, "mosquitto_pub --cafile") {
		t.Fatalf("devices add does not say how to publish:\n%s", out)
	}
	runCmd(t, bin, "edge", "devices", "add", "d2", "--data", data, "--out", certs)
	if fi, err := os.Stat(filepath.Join(certs, "d1.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("d1.key: %v %v", fi.Mode(), err)
	}
	if _, err := exec.Command(bin, "edge", "devices", "add", "../x", "--data", data, "--out", certs).CombinedOutput(); err == nil {
		t.Fatal("a device name with a slash was accepted")
	}
	// A certificate with the right CN from another CA.
	otherCA, err := pki.NewEphemeralCA("other", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := otherCA.Issue(pki.LeafRequest{CommonName: "d1", Purpose: pki.ClientAuth, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	forgedPEM, _ := pki.EncodeCertificate(forged)
	forgedFile := writeFile(t, filepath.Join(tmp, "forged.pem"), forgedPEM)

	edgeAddr, metricsAddr := freeAddr(t), freeAddr(t)
	_, edgePort, _ := net.SplitHostPort(edgeAddr)
	_, cloudPort, _ := net.SplitHostPort(cloudAddr)
	edgeArgs := []string{"edge", "run", "--data", data, "--listen", edgeAddr, "--cloud-env", cloudEnv, "--bucket", "telemetry",
		"--deployments=false", "--retry-min", "100ms", "--retry-max", "1s", "--log-format", "text", "--metrics-listen", metricsAddr}
	edge := startEdge(t, bin, data, edgeArgs)
	ca := filepath.Join(certs, "ca.crt")
	device := func(name string) []string {
		return []string{"--cafile", ca, "--cert", filepath.Join(certs, name+".crt"), "--key", filepath.Join(certs, name+".key"),
			"-h", "127.0.0.1", "-p", edgePort, "-i", name}
	}

	// Who may not connect at all.
	refused := map[string][]string{
		"no client certificate":   {"--cafile", ca, "-h", "127.0.0.1", "-p", edgePort, "-i", "d1"},
		"certificate of other CA": {"--cafile", ca, "--cert", forgedFile, "--key", forgedFile, "-h", "127.0.0.1", "-p", edgePort, "-i", "d1"},
		"plaintext MQTT":          {"-h", "127.0.0.1", "-p", edgePort, "-i", "d1"},
		"client ID is not the CN": append(device("d1")[:10], "-i", "d2"),
	}
	for what, args := range refused {
		cmd := exec.Command(pub, append(args, "-q", "1", "-t", "devices/d1/telemetry/x", "-m", "REFUSED")...)
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Errorf("%s: mosquitto_pub succeeded:\n%s", what, out)
		}
	}
	// The modern profile is TLS 1.3 only, even for a valid device.
	d1Cert, err := tls.LoadX509KeyPair(filepath.Join(certs, "d1.crt"), filepath.Join(certs, "d1.key"))
	if err != nil {
		t.Fatal(err)
	}
	brokerCA := x509.NewCertPool()
	caPEM, _ := os.ReadFile(ca)
	brokerCA.AppendCertsFromPEM(caPEM)
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		cfg := tlsconf.WithClientCertificate(tlsconf.Client(tlsconf.Compat, brokerCA, "127.0.0.1"), d1Cert)
		cfg.MaxVersion = v
		conn, err := tls.Dial("tcp", edgeAddr, cfg)
		if err == nil {
			// The server's verdict on the client certificate comes with
			// its first record in TLS 1.3.
			conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			_, err = conn.Read(make([]byte, 1))
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				err = nil
			}
			conn.Close()
		}
		if ok := err == nil; ok != (v == tls.VersionTLS13) {
			t.Errorf("device handshake with %s: %v", tls.VersionName(v), err)
		}
	}
	if !strings.Contains(edge.logs.String(), "client ID does not match the certificate") {
		t.Error("the client ID mismatch was not logged")
	}

	// Policy and IPC: d2 listens on its own topics and broadcast; d1 tries
	// to write to d2; a component on the IPC socket writes to both.
	ipc := filepath.Join(data, "ipc.sock")
	subCmd := exec.Command(sub, append(device("d2"), "-t", "devices/d2/#", "-t", "broadcast/#", "-v", "-C", "2", "-W", "15")...)
	var subOut bytes.Buffer
	subCmd.Stdout, subCmd.Stderr = &subOut, &subOut
	if err := subCmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "d2 to connect", func() bool { return strings.Contains(edge.logs.String(), `"device connected" device=d2`) })
	time.Sleep(200 * time.Millisecond) // SUBSCRIBE follows CONNECT
	exec.Command(pub, append(device("d1"), "-q", "1", "-t", "devices/d2/cmd", "-m", "INTRUDER")...).Run()
	runCmd(t, pub, "--unix", ipc, "-i", "component", "-q", "1", "-t", "devices/d2/cmd", "-m", "FROM-COMPONENT")
	runCmd(t, pub, "--unix", ipc, "-i", "component", "-q", "1", "-t", "broadcast/all", "-m", "BROADCAST")
	if err := subCmd.Wait(); err != nil {
		t.Fatalf("d2's subscriber: %v\n%s", err, subOut.String())
	}
	if got := subOut.String(); !strings.Contains(got, "devices/d2/cmd FROM-COMPONENT") || !strings.Contains(got, "broadcast/all BROADCAST") || strings.Contains(got, "INTRUDER") {
		t.Fatalf("d2 received:\n%s", got)
	}
	if !strings.Contains(edge.logs.String(), "device policy denied") {
		t.Error("the denied publish was not logged")
	}
	// A device may not publish to broadcast: d2 would not see it either.
	if strings.Contains(subOut.String(), "d1") {
		t.Fatalf("d2 saw a message of d1: %s", subOut.String())
	}

	// Online: N canaries over mTLS, captured on the device and cloud ports
	// and on a plaintext control connection (which proves the capture sees
	// loopback payloads).
	control, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer control.Close()
	_, controlPort, _ := net.SplitHostPort(control.Addr().String())
	pcap := startTshark(t, tshark, fmt.Sprintf("tcp port %s or tcp port %s or tcp port %s", edgePort, cloudPort, controlPort))
	const n, m = 20, 10
	stamp := time.Now().UnixNano()
	online := canaries("EDGE-CANARY-ON", stamp, n)
	publish(t, pub, device("d1"), online)
	want := map[string]bool{}
	for _, c := range online {
		want[c] = true
	}
	waitExported(t, cloud.S3(t), want)
	go func() {
		if c, err := control.Accept(); err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	conn, err := net.Dial("tcp", control.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "CONTROL %s\n", online[0])
	conn.Close()
	time.Sleep(300 * time.Millisecond)
	captured := pcap()
	if bytes.Count(captured, []byte(online[0])) == 0 {
		t.Fatal("the plaintext control connection's canary is not in the capture: the capture proves nothing")
	}
	for _, c := range online {
		// The control line holds online[0] once; nothing else may.
		limit := 0
		if c == online[0] {
			limit = 1
		}
		if got := bytes.Count(captured, []byte(c)); got > limit {
			t.Fatalf("canary %s appears %d times in the capture of the device and cloud ports", c, got-limit)
		}
	}

	// Metrics: what happened so far, scraped with curl over TLS verified
	// against the broker CA; plaintext HTTP gets an empty reply.
	metrics := scrapeEdge(t, curl, ca, metricsAddr)
	for series, least := range map[string]float64{
		`convoy_edge_device_connections_refused_total{reason="no_certificate"}`:        1,
		`convoy_edge_device_connections_refused_total{reason="untrusted_certificate"}`: 1,
		`convoy_edge_device_connections_refused_total{reason="identity_mismatch"}`:     1,
		`convoy_edge_device_connections_refused_total{reason="tls_handshake"}`:         1,
		`convoy_edge_device_policy_denials_total{action="publish"}`:                    1,
		"convoy_edge_uplink_messages_queued_total":                                     n,
		"convoy_edge_uplink_messages_exported_total":                                   n,
	} {
		if v, ok := metrics[series]; !ok || v < least {
			t.Errorf("%s = %v (present %v), want at least %v", series, v, ok, least)
		}
	}
	if v := metrics["convoy_edge_uplink_queue_messages"]; v != 0 {
		t.Errorf("convoy_edge_uplink_queue_messages = %v after the export, want 0", v)
	}
	if out, err := exec.Command(curl, "-sS", "http://"+metricsAddr+"/metrics").CombinedOutput(); err == nil || strings.Contains(string(out), "HTTP/") {
		t.Errorf("plaintext /metrics: %v\n%s", err, out)
	}

	// Offline: the cloud stops, devices keep publishing (acknowledged
	// once on disk), the edge is killed, then both come back.
	if err := cloud.Stop(); err != nil {
		t.Fatal(err)
	}
	offline := canaries("EDGE-CANARY-OFF", stamp, m)
	publish(t, pub, device("d1"), offline)
	waitFor(t, 10*time.Second, "a failed upload", func() bool { return strings.Contains(edge.logs.String(), "upload failed") })
	// At rest: the queued canaries are in no file of the data directory
	// (edge.db, its WAL and -shm included), neither while the edge runs
	// nor after kill -9.
	checkAtRest(t, data, offline)
	edge.kill()
	checkAtRest(t, data, offline)
	edge = startEdge(t, bin, data, edgeArgs)
	// What was acknowledged survived kill -9, before the cloud is back.
	if !strings.Contains(edge.logs.String(), fmt.Sprintf("queued_messages=%d ", m)) {
		t.Fatalf("the restarted edge does not report %d queued messages:\n%s", m, edge.logs.String())
	}
	cloud = harness.Start(t, harness.Options{DataDir: cloud.DataDir, Listen: cloudAddr})
	for _, c := range offline {
		want[c] = true
	}
	waitExported(t, cloud.S3(t), want)
}

// scrapeEdge fetches the edge's /metrics with curl, trusting only the
// broker CA, and returns the samples by series.
func scrapeEdge(t *testing.T, curl, ca, addr string) map[string]float64 {
	t.Helper()
	out := runCmd(t, curl, "-sS", "--fail", "--cacert", ca, "https://"+addr+"/metrics")
	samples := map[string]float64{}
	for _, line := range strings.Split(out, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		samples[line[:i]] = v
	}
	return samples
}

// checkAtRest reads every file under dir and fails if one holds a canary
// (or the telemetry topic); it insists on having read edge.db and its WAL.
func checkAtRest(t *testing.T, dir string, canaries []string) {
	t.Helper()
	read := map[string]bool{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		read[filepath.Base(p)] = len(b) > 0
		for _, c := range append(canaries, "devices/d1/telemetry/temp") {
			if bytes.Contains(b, []byte(c)) {
				t.Errorf("%s holds %q in plaintext", p, c)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"edge.db", "edge.db-wal"} {
		if !read[f] {
			t.Fatalf("%s is missing or empty under %s: the check proves nothing", f, dir)
		}
	}
}

func canaries(prefix string, stamp int64, n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("%s-%d-%03d", prefix, stamp, i))
	}
	return out
}

// publish sends each line as one QoS 1 message on one connection.
func publish(t *testing.T, pub string, device []string, lines []string) {
	t.Helper()
	cmd := exec.Command(pub, append(device, "-q", "1", "-t", "devices/d1/telemetry/temp", "-l")...)
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, out)
	}
}

// waitExported waits until the objects under edge/core1/ hold exactly the
// payloads in want, each once.
func waitExported(t *testing.T, client *s3.Client, want map[string]bool) {
	t.Helper()
	var seen map[string]int
	deadline := time.Now().Add(30 * time.Second)
	for {
		seen = map[string]int{}
		if err := readExported(client, seen); err == nil {
			ok := len(seen) == len(want)
			for c := range want {
				ok = ok && seen[c] == 1
			}
			if ok {
				return
			}
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	for c := range want {
		if seen[c] != 1 {
			t.Errorf("canary %s is in S3 %d times", c, seen[c])
		}
	}
	for c, k := range seen {
		if !want[c] {
			t.Errorf("unexpected payload %q in S3 (%d times)", c, k)
		}
	}
	t.FailNow()
}

func readExported(client *s3.Client, seen map[string]int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	list, err := client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String("telemetry"), Prefix: aws.String("edge/core1/")})
	if err != nil {
		return err
	}
	for _, o := range list.Contents {
		obj, err := client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("telemetry"), Key: o.Key})
		if err != nil {
			return err
		}
		sc := bufio.NewScanner(obj.Body)
		for sc.Scan() {
			var l struct {
				Seq     int64  `json:"seq"`
				Topic   string `json:"topic"`
				Device  string `json:"device"`
				Payload []byte `json:"payload"`
			}
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				obj.Body.Close()
				return fmt.Errorf("%s: %w", *o.Key, err)
			}
			if l.Device != "d1" || l.Topic != "devices/d1/telemetry/temp" || l.Seq <= 0 {
				obj.Body.Close()
				return fmt.Errorf("%s: bad line %s", *o.Key, sc.Text())
			}
			seen[string(l.Payload)]++
		}
		obj.Body.Close()
	}
	return nil
}

type edgeProc struct {
	cmd  *exec.Cmd
	logs *harness.SyncBuffer
	done chan struct{}
}

func startEdge(t *testing.T, bin, data string, args []string) *edgeProc {
	t.Helper()
	e := &edgeProc{cmd: exec.Command(bin, args...), logs: &harness.SyncBuffer{}, done: make(chan struct{})}
	e.cmd.Stdout, e.cmd.Stderr = e.logs, e.logs
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { e.cmd.Wait(); close(e.done) }()
	t.Cleanup(func() {
		e.kill()
		if t.Failed() {
			t.Logf("edge output:\n%s", e.logs.String())
		}
	})
	pid := fmt.Sprint(e.cmd.Process.Pid)
	waitFor(t, 20*time.Second, "the edge core to be ready", func() bool {
		env, err := harness.ParseEnvFile(filepath.Join(data, "edge.env"))
		select {
		case <-e.done:
			t.Fatalf("edge exited:\n%s", e.logs.String())
		default:
		}
		return err == nil && env["CONVOY_EDGE_PID"] == pid
	})
	return e
}

// kill is SIGKILL: a crash, not a shutdown.
func (e *edgeProc) kill() {
	e.cmd.Process.Kill()
	<-e.done
}

func waitFor(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func runCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
