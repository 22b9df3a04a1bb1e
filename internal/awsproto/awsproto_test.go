package awsproto

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func TestDetect(t *testing.T) {
	auth := func(service string) string {
		return "AWS4-HMAC-SHA256 Credential=AKIA/20261125/us-east-1/" + service + "/aws4_request, SignedHeaders=host, Signature=00"
	}
	tests := []struct {
		name, method, path, target, authz, ctype string
		service                                  string
		proto                                    Protocol
	}{
		{"sagemaker json", "POST", "/", "SageMaker.ListTrainingJobs", auth("sagemaker"), "application/x-amz-json-1.1", "sagemaker", JSON},
		{"kms json", "POST", "/", "TrentService.Encrypt", auth("kms"), "application/x-amz-json-1.1", "kms", JSON},
		{"runtime", "POST", "/endpoints/e1/invocations", "", auth("sagemaker"), "application/json", "sagemaker", RestJSON},
		{"s3", "PUT", "/bucket/key", "", auth("s3"), "", "s3", RestXML},
		{"iam", "POST", "/", "", auth("iam"), "application/x-www-form-urlencoded", "iam", Query},
		{"sts", "POST", "/", "", auth("sts"), "application/x-www-form-urlencoded; charset=utf-8", "sts", Query},
		{"anonymous form", "POST", "/", "", "", "application/x-www-form-urlencoded", "", Query},
		{"anonymous target", "POST", "/", "SageMaker.ListModels", "", "", "sagemaker", JSON},
		{"anonymous get", "GET", "/bucket", "", "", "", "", RestXML},
	}
	for _, tc := range tests {
		r := httptest.NewRequest(tc.method, tc.path, nil)
		if tc.target != "" {
			r.Header.Set("X-Amz-Target", tc.target)
		}
		if tc.authz != "" {
			r.Header.Set("Authorization", tc.authz)
		}
		if tc.ctype != "" {
			r.Header.Set("Content-Type", tc.ctype)
		}
		s, p := Detect(r)
		if s != tc.service || p != tc.proto {
			t.Errorf("%s: got %q %s, want %q %s", tc.name, s, p, tc.service, tc.proto)
		}
	}
	r := httptest.NewRequest("GET", "/b/k?X-Amz-Credential=AKIA%2F20261125%2Fus-east-1%2Fs3%2Faws4_request", nil)
	if s, p := Detect(r); s != "s3" || p != RestXML {
		t.Errorf("presigned: %q %s", s, p)
	}
}

func TestWriteErrorShapes(t *testing.T) {
	r := httptest.NewRequest("POST", "/", nil)
	ctx, id := WithRequestID(r.Context())
	r = r.WithContext(ctx)

	w := httptest.NewRecorder()
	WriteError(w, r, JSON, Errorf(400, "ValidationException", "bad %s", "thing"))
	var j map[string]string
	if err := json.Unmarshal(w.Body.Bytes(), &j); err != nil || j["__type"] != "ValidationException" || j["message"] != "bad thing" || w.Code != 400 {
		t.Errorf("json error: %d %s", w.Code, w.Body)
	}

	w = httptest.NewRecorder()
	WriteError(w, r, Query, Errorf(403, "AccessDenied", "no"))
	var q struct {
		XMLName   xml.Name `xml:"ErrorResponse"`
		Type      string   `xml:"Error>Type"`
		Code      string   `xml:"Error>Code"`
		RequestID string   `xml:"RequestId"`
	}
	if err := xml.Unmarshal(w.Body.Bytes(), &q); err != nil || q.Code != "AccessDenied" || q.Type != "Sender" || q.RequestID != id || w.Code != 403 {
		t.Errorf("query error: %d %s", w.Code, w.Body)
	}
	if strings.Contains(w.Body.String(), "<Errors>") {
		t.Error("query error has an <Errors> wrapper")
	}

	w = httptest.NewRecorder()
	WriteError(w, r, RestXML, Errorf(404, "NoSuchKey", "gone"))
	var s struct {
		XMLName xml.Name `xml:"Error"`
		Code    string   `xml:"Code"`
	}
	if err := xml.Unmarshal(w.Body.Bytes(), &s); err != nil || s.Code != "NoSuchKey" || w.Code != 404 {
		t.Errorf("s3 error: %d %s", w.Code, w.Body)
	}

	w = httptest.NewRecorder()
	WriteError(w, httptest.NewRequest(http.MethodHead, "/b/k", nil), RestXML, Errorf(404, "NoSuchKey", "gone"))
	if w.Body.Len() != 0 || w.Code != 404 {
		t.Errorf("HEAD error has a body: %s", w.Body)
	}
}

func FuzzDetect(f *testing.F) {
	f.Add("AWS4-HMAC-SHA256 Credential=AKIA/20261125/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00", "/b/k", "", "X-Amz-Credential=a/b/c/d/e")
	f.Add("AWS4-HMAC-SHA256 ,,,Credential=", "/endpoints/", "SageMaker.X", "")
	f.Fuzz(func(t *testing.T, authz, path, target, query string) {
		r := httptest.NewRequest("POST", "/", nil)
		r.URL.Path = path
		r.URL.RawQuery = query
		r.Header.Set("Authorization", authz)
		r.Header.Set("X-Amz-Target", target)
		s, _ := Detect(r)
		if strings.Contains(s, "/") {
			t.Fatalf("service %q contains a slash", s)
		}
	})
}

// Fields of an error's shape reach JSON bodies beside __type and message,
// and cannot replace them.
func TestWriteErrorFields(t *testing.T) {
	r := httptest.NewRequest("POST", "/endpoints/e/invocations", nil)
	w := httptest.NewRecorder()
	WriteError(w, r, RestJSON, &Error{Code: "ModelError", Message: "m", Status: 424,
		Fields: map[string]any{"OriginalStatusCode": 415, "LogStreamArn": "arn:x", "__type": "Other"}})
	var j map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &j); err != nil {
		t.Fatal(err)
	}
	if w.Code != 424 || j["__type"] != "ModelError" || j["message"] != "m" || j["OriginalStatusCode"] != 415.0 || j["LogStreamArn"] != "arn:x" ||
		w.Header().Get("Content-Type") != "application/json" || w.Header().Get("x-amzn-ErrorType") != "ModelError" {
		t.Errorf("%d %v %v", w.Code, w.Header(), j)
	}
}

func TestRequestIDIsUUIDv4AndUnique(t *testing.T) {
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := make(map[string]bool)
	for range 10000 {
		ctx, id := WithRequestID(context.Background())
		if !uuid.MatchString(id) {
			t.Fatalf("request ID %q is not a version-4 UUID", id)
		}
		if RequestID(ctx) != id {
			t.Fatalf("RequestID(ctx) = %q, want %q", RequestID(ctx), id)
		}
		if seen[id] {
			t.Fatalf("request ID %q issued twice", id)
		}
		seen[id] = true
	}
}
