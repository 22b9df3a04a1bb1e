package awsproto

import (
	"net/http/httptest"
	"testing"
)

// WriteQueryStrings writes byte for byte what the reflective
// WriteQueryResult writes, escaping included.
func TestWriteQueryStringsMatchesWriteQueryResult(t *testing.T) {
	r := httptest.NewRequest("POST", "/", nil)
	ctx, _ := WithRequestID(r.Context())
	r = r.WithContext(ctx)
	a, b := httptest.NewRecorder(), httptest.NewRecorder()
	WriteQueryResult(a, r, "https://sts.amazonaws.com/doc/2011-06-15/", "GetCallerIdentity",
		struct{ UserId, Account, Arn string }{"AIDA<&>\"'", "123456789012", "arn:aws:iam::123456789012:user/a&b"})
	WriteQueryStrings(b, r, "https://sts.amazonaws.com/doc/2011-06-15/", "GetCallerIdentity",
		"UserId", "AIDA<&>\"'", "Account", "123456789012", "Arn", "arn:aws:iam::123456789012:user/a&b")
	if a.Body.String() != b.Body.String() {
		t.Fatalf("reflective:\n%s\nby hand:\n%s", a.Body, b.Body)
	}
	for _, h := range []string{"Content-Type", "Content-Length"} {
		if a.Header().Get(h) != b.Header().Get(h) {
			t.Errorf("%s: %q vs %q", h, a.Header().Get(h), b.Header().Get(h))
		}
	}
}
