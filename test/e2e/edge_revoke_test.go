package e2e

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"convoy/test/e2e/harness"
)

// Revocation with real clients: a device connected with mosquitto_sub is
// disconnected within seconds of `convoy edge devices revoke`, and its next
// connection is refused in the TLS handshake; another device stays
// connected and keeps working; a certificate re-issued to the same name
// works.
func TestEdgeRevocation(t *testing.T) {
	pub := harness.Tool(t, "mosquitto_pub")
	sub := harness.Tool(t, "mosquitto_sub")
	bin := harness.Binary(t)

	tmp := t.TempDir()
	data, certs, reissued := filepath.Join(tmp, "edge"), filepath.Join(tmp, "certs"), filepath.Join(tmp, "certs2")
	runCmd(t, bin, "edge", "init", "--data", data, "--name", "core1")
	added := runCmd(t, bin, "edge", "devices", "add", "d1", "--data", data, "--out", certs)
	runCmd(t, bin, "edge", "devices", "add", "d2", "--data", data, "--out", certs)
	oldSerial := regexp.MustCompile(`certificate ([0-9a-f]+) valid until`).FindStringSubmatch(added)
	if oldSerial == nil {
		t.Fatalf("devices add does not print the serial:\n%s", added)
	}

	edgeAddr := freeAddr(t)
	_, edgePort, _ := strings.Cut(edgeAddr, ":")
	edge := startEdge(t, bin, data, []string{"edge", "run", "--data", data, "--listen", edgeAddr, "--log-format", "text"})
	device := func(dir, name string) []string {
		return []string{"--cafile", filepath.Join(dir, "ca.crt"), "--cert", filepath.Join(dir, name+".crt"), "--key", filepath.Join(dir, name+".key"),
			"-h", "127.0.0.1", "-p", edgePort, "-i", name, "-V", "mqttv5"}
	}

	// d1 and d2 connected and subscribed; d2 waits for one message.
	var d1Out, d2Out bytes.Buffer
	d1Sub := exec.Command(sub, append(device(certs, "d1"), "-t", "devices/d1/#", "-v", "-d")...)
	d1Sub.Stdout, d1Sub.Stderr = &d1Out, &d1Out
	d2Sub := exec.Command(sub, append(device(certs, "d2"), "-t", "devices/d2/#", "-v", "-C", "1", "-W", "30")...)
	d2Sub.Stdout, d2Sub.Stderr = &d2Out, &d2Out
	for _, c := range []*exec.Cmd{d1Sub, d2Sub} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		defer c.Process.Kill()
	}
	d1Done := make(chan error, 1)
	go func() { d1Done <- d1Sub.Wait() }()
	for _, name := range []string{"d1", "d2"} {
		waitFor(t, 10*time.Second, name+" to connect", func() bool {
			return strings.Contains(edge.logs.String(), `"device connected" device=`+name+" ")
		})
	}
	time.Sleep(300 * time.Millisecond) // SUBSCRIBE follows CONNECT

	revokedAt := time.Now()
	out := runCmd(t, bin, "edge", "devices", "revoke", "d1", "--data", data, "--reason", "lost in the field")
	if !strings.Contains(out, oldSerial[1]) {
		t.Fatalf("revoke does not name serial %s:\n%s", oldSerial[1], out)
	}
	select {
	case <-d1Done:
		if took := time.Since(revokedAt); took > 5*time.Second {
			t.Fatalf("d1 was disconnected %s after the revoke", took)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("d1 is still connected 5s after the revoke:\n%s", d1Out.String())
	}
	if !strings.Contains(d1Out.String(), "DISCONNECT (135)") { // 135: not authorized
		t.Errorf("d1 was not sent DISCONNECT \"not authorized\":\n%s", d1Out.String())
	}

	// The old certificate is refused from now on, in the handshake: in TLS
	// 1.3 the client learns it as a lost connection with no CONNACK, and
	// the broker never sees a CONNECT (which would log "device refused").
	for range 2 {
		cmd := exec.Command(pub, append(device(certs, "d1"), "-q", "1", "-t", "devices/d1/telemetry/x", "-m", "REVOKED")...)
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Fatalf("a revoked certificate published:\n%s", out)
		} else if strings.Contains(string(out), "authori") {
			t.Errorf("the revoked certificate got as far as CONNACK:\n%s", out)
		}
	}
	if strings.Contains(edge.logs.String(), `msg="device refused" `) {
		t.Errorf("a revoked certificate passed the handshake:\n%s", edge.logs.String())
	}
	if n := strings.Count(edge.logs.String(), "serial="+oldSerial[1]); n != 1 {
		t.Errorf("the refusal of serial %s is logged %d times, want once:\n%s", oldSerial[1], n, edge.logs.String())
	}

	// d2 was never disconnected and still gets its messages (sent by a
	// component: a second connection of d2 would take its session over).
	ipc := filepath.Join(data, "ipc.sock")
	runCmd(t, pub, "--unix", ipc, "-i", "component", "-q", "1", "-t", "devices/d2/cmd", "-m", "STILL-HERE")
	if err := d2Sub.Wait(); err != nil || !strings.Contains(d2Out.String(), "devices/d2/cmd STILL-HERE") {
		t.Fatalf("d2's subscriber: %v\n%s", err, d2Out.String())
	}
	if n := strings.Count(edge.logs.String(), `"device connected" device=d2 `); n != 1 {
		t.Errorf("d2 connected %d times, want once:\n%s", n, edge.logs.String())
	}

	// A certificate re-issued to d1 works; the old one still does not.
	runCmd(t, bin, "edge", "devices", "add", "d1", "--data", data, "--out", reissued)
	var newOut bytes.Buffer
	newSub := exec.Command(sub, append(device(reissued, "d1"), "-t", "devices/d1/#", "-v", "-C", "1", "-W", "30")...)
	newSub.Stdout, newSub.Stderr = &newOut, &newOut
	if err := newSub.Start(); err != nil {
		t.Fatal(err)
	}
	defer newSub.Process.Kill()
	waitFor(t, 10*time.Second, "the re-issued d1 to connect", func() bool {
		return strings.Count(edge.logs.String(), `"device connected" device=d1 `) == 2
	})
	time.Sleep(300 * time.Millisecond)
	runCmd(t, pub, "--unix", ipc, "-i", "component", "-q", "1", "-t", "devices/d1/cmd", "-m", "REISSUED")
	if err := newSub.Wait(); err != nil || !strings.Contains(newOut.String(), "devices/d1/cmd REISSUED") {
		t.Fatalf("the re-issued d1's subscriber: %v\n%s", err, newOut.String())
	}
	// And it may publish (QoS 1: mosquitto_pub succeeds only on PUBACK).
	runCmd(t, pub, append(device(reissued, "d1"), "-q", "1", "-t", "devices/d1/telemetry/t", "-m", "REISSUED")...)
	if out, err := exec.Command(pub, append(device(certs, "d1"), "-q", "1", "-t", "devices/d1/telemetry/x", "-m", "REVOKED")...).CombinedOutput(); err == nil {
		t.Fatalf("the revoked certificate works again after the re-issue:\n%s", out)
	}

	list := runCmd(t, bin, "edge", "devices", "list", "--data", data)
	for _, want := range []string{oldSerial[1] + " ", "revoked ", "(lost in the field)", "valid"} {
		if !strings.Contains(list, want) {
			t.Errorf("devices list lacks %q:\n%s", want, list)
		}
	}
	if strings.Count(list, "\nd1 ") != 3 || strings.Count(list, "\nd2 ") != 1 { // two certificates and the unregistered cut-off
		t.Errorf("devices list:\n%s", list)
	}
}
