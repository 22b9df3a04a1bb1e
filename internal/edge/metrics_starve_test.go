package edge

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"convoy/internal/pki"
	"convoy/internal/tlsconf"
)

// TestSilentPeersStarveMetrics: the edge metrics listener allows
// metricsMaxConns (8) connections; any network peer (no credential needed:
// the slot is taken at accept, before TLS) that opens 8 TCP connections
// and sends nothing holds them all for ReadHeaderTimeout (10 s) and, by
// reconnecting, forever, if nothing shed them. Now Prometheus's scrape is
// served (tlslisten sheds connections silent for a second).
func TestSilentPeersStarveMetrics(t *testing.T) {
	ca, err := pki.NewEphemeralCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(pki.LeafRequest{CommonName: "core", Names: []string{"127.0.0.1"}, Purpose: pki.ServerAuth, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cfg := tlsconf.Server(tlsconf.Modern, func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return leaf, nil }, tlsconf.ServerOptions{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		serveMetrics(ctx, ln, cfg, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
		close(done)
	}()
	t.Cleanup(func() { cancel(); <-done })
	for range metricsMaxConns {
		raw, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { raw.Close() })
	}
	time.Sleep(100 * time.Millisecond)
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsconf.Client(tlsconf.Modern, roots, "127.0.0.1")}}
	resp, err := client.Get("https://" + ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatalf("scrape not served while %d silent unauthenticated TCP connections hold every slot: %v", metricsMaxConns, err)
	}
	resp.Body.Close()
}
