package edge

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// The built-in device policy. A device may publish and subscribe under
// devices/<its name>/ and subscribe to broadcast/; nothing else. Components
// on the core's IPC socket are trusted with every topic.

// DeviceMayPublish reports whether device may publish to topic (a topic
// name, without wildcards: the broker refuses those before asking).
func DeviceMayPublish(device, topic string) bool {
	levels := strings.Split(topic, "/")
	return len(levels) >= 2 && levels[0] == "devices" && levels[1] == device
}

// DeviceMaySubscribe reports whether device may subscribe to filter. The
// device's own level must be literal: devices/+/# would reach every device.
// Shared subscriptions ($share/…) are refused.
func DeviceMaySubscribe(device, filter string) bool {
	levels := strings.Split(filter, "/")
	switch {
	case levels[0] == "broadcast":
		return true
	case len(levels) >= 2 && levels[0] == "devices" && levels[1] == device:
		return true
	}
	return false
}

// telemetryTopic reports whether topic matches devices/+/telemetry/#, the
// topics the uplink exports, and returns the device level.
func telemetryTopic(topic string) (device string, ok bool) {
	levels := strings.Split(topic, "/")
	if len(levels) >= 3 && levels[0] == "devices" && levels[2] == "telemetry" && levels[1] != "" {
		return levels[1], true
	}
	return "", false
}

// errIdentity refuses a connection whose client ID is not its certificate's CN.
var errIdentity = errors.New("client ID does not match the certificate")

// errWillTopic refuses a CONNECT whose will (last will and testament)
// names a topic the device may not publish on.
var errWillTopic = errors.New("will topic outside the device policy")

// policyHook is the broker's authentication and authorization: the TLS
// handshake has already verified the device's certificate against the
// device CA (tls.RequireAndVerifyClientCert) and the device register
// (revoke.go); this hook binds the MQTT client ID to the certificate's CN,
// checks the register again and applies the device policy.
type policyHook struct {
	mqtt.HookBase
	server  *mqtt.Server
	ipcID   string // listener ID of the IPC socket
	log     *slog.Logger
	denied  *onceSet
	guard   *revocationGuard
	metrics *metrics
}

func (h *policyHook) ID() string { return "convoy-edge-policy" }

func (h *policyHook) Provides(b byte) bool {
	return b == mqtt.OnConnect || b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

// peerCN returns the CN of the verified client certificate of a TLS
// connection, or "" when there is none.
func peerCN(cl *mqtt.Client) string {
	tc, ok := cl.Net.Conn.(*tls.Conn)
	if !ok {
		return ""
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return ""
	}
	return certs[0].Subject.CommonName
}

// OnConnect refuses a device whose client ID is not its certificate's CN,
// with CONNACK "not authorized" (mochi's OnConnectAuthenticate can only
// answer "bad user name or password", which would mislead).
func (h *policyHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if cl.Net.Listener == h.ipcID {
		return nil
	}
	cn := peerCN(cl)
	err := checkClientID(cn, cl.ID)
	if err == nil && h.guard != nil {
		// The handshake checked too; this catches a revocation that came
		// between the handshake and CONNECT.
		err = h.guard.check(peerChains(cl))
	}
	if err == nil && pk.Connect.WillFlag && !DeviceMayPublish(cn, pk.Connect.WillTopic) {
		// The broker publishes a will without an ACL check (mochi's
		// sendLWT), so its topic is held to the device policy here, once,
		// before the broker accepts it.
		err = fmt.Errorf("%w: %q", errWillTopic, pk.Connect.WillTopic)
	}
	if err != nil {
		h.log.Warn("device refused", "remote", cl.Net.Remote, "client_id", cl.ID, "cert_cn", cn, "reason", err)
		h.metrics.deviceRefused(connectRefusal(err))
		code := packets.ErrNotAuthorized
		if cl.Properties.ProtocolVersion < 5 {
			// mochi's SendConnack turns this one into MQTT 3's
			// return code 5, "not authorized".
			code = packets.ErrBadUsernameOrPassword
		}
		h.server.SendConnack(cl, code, false, nil)
		return err
	}
	h.log.Info("device connected", "device", cn, "remote", cl.Net.Remote)
	return nil
}

// checkClientID is the identity rule: the client ID must be the CN, and the
// CN a valid device name.
func checkClientID(cn, clientID string) error {
	if cn == "" || !ValidDeviceName(cn) || clientID != cn {
		return errIdentity
	}
	return nil
}

// OnConnectAuthenticate accepts what OnConnect let through: the
// certificate was verified in the handshake and the ID bound in OnConnect.
func (h *policyHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	return cl.Net.Listener == h.ipcID || checkClientID(peerCN(cl), cl.ID) == nil
}

// OnACLCheck applies the device policy; components are trusted.
func (h *policyHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Listener == h.ipcID {
		return true
	}
	device := cl.ID // equal to the certificate's CN, checked in OnConnect
	ok := DeviceMaySubscribe(device, topic)
	action := "subscribe"
	if write {
		ok, action = DeviceMayPublish(device, topic), "publish"
	}
	if !ok {
		h.metrics.policyDenied(action)
	}
	if !ok && h.denied.first(device+"\x00"+action+"\x00"+topic) {
		h.log.Warn("device policy denied (logged once per device, action and topic)", "device", device, "action", action, "topic", topic)
	}
	return ok
}

// onceSet remembers keys so that something is logged once per key; it
// forgets everything when it holds max keys, so a device cycling through
// topics costs bounded memory and at worst a log line per max denials.
type onceSet struct {
	mu   sync.Mutex
	seen map[string]struct{}
	max  int
}

func newOnceSet(max int) *onceSet { return &onceSet{seen: map[string]struct{}{}, max: max} }

func (s *onceSet) first(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.seen[key]; ok {
		return false
	}
	if len(s.seen) >= s.max {
		clear(s.seen)
	}
	s.seen[key] = struct{}{}
	return true
}
