package sigv4

import (
	"net/http"
	"testing"
)

// X-Amz-Target picks the operation of a JSON-protocol request and, for
// SageMaker, whether the server routes it to the runtime (restJson1, no
// X-Amz-Target, /endpoints/…) or to the control plane (awsproto.Detect,
// server.route). Unsigned, whoever replays a captured InvokeEndpoint
// request within the skew window could add it and have the signed body
// served by another operation. Verify refuses it, and an unsigned
// Content-Type, on services other than S3; signed, both verify.
func TestUnsignedTargetHeaderRejected(t *testing.T) {
	body := []byte(`{"EndpointName":"victim","EndpointConfigName":"attacker"}`)
	req := newClientRequest(t, http.MethodPost, "https://convoy.example:4443/endpoints/victim/invocations", body)
	req.Header.Set("Content-Type", "application/json")
	sdkSign(t, creds, req, body, "", "sagemaker")
	req.Header.Set("X-Amz-Target", "SageMaker.UpdateEndpoint") // added after signing
	r := toServer(t, req)
	if _, err := newVerifier(signTime).Verify(r); err == nil {
		t.Fatal("a non-S3 request with an unsigned X-Amz-Target header verified")
	}

	signed := newClientRequest(t, http.MethodPost, "https://convoy.example:4443/", body)
	signed.Header.Set("Content-Type", "application/x-amz-json-1.1")
	signed.Header.Set("X-Amz-Target", "SageMaker.UpdateEndpoint")
	sdkSign(t, creds, signed, body, "", "sagemaker")
	if _, err := newVerifier(signTime).Verify(toServer(t, signed)); err != nil {
		t.Fatalf("the same request with both headers signed: %v", err)
	}
	noCT := newClientRequest(t, http.MethodPost, "https://convoy.example:4443/", body)
	sdkSign(t, creds, noCT, body, "", "sagemaker")
	noCT.Header.Set("Content-Type", "application/x-www-form-urlencoded") // added after signing
	if _, err := newVerifier(signTime).Verify(toServer(t, noCT)); err == nil {
		t.Fatal("a non-S3 request with an unsigned Content-Type verified")
	}
}
