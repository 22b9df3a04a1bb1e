package policy

import (
	"errors"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

// seedPolicies are realistic documents of every kind the package reads.
var seedPolicies = []string{
	// Identity policy: S3 home folders with variables and conditions.
	`{"Version":"2012-10-17","Statement":[
		{"Sid":"ListHome","Effect":"Allow","Action":"s3:ListBucket","Resource":"arn:aws:s3:::data",
		 "Condition":{"StringLike":{"s3:prefix":["","home/","home/${aws:username}/*"]}}},
		{"Sid":"RWHome","Effect":"Allow","Action":["s3:GetObject","s3:PutObject"],
		 "Resource":"arn:aws:s3:::data/home/${aws:username}/*"},
		{"Sid":"TLSOnly","Effect":"Deny","Action":"s3:*","Resource":"*",
		 "Condition":{"Bool":{"aws:SecureTransport":false}}}]}`,
	// SageMaker guard rails.
	`{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["sagemaker:CreateTrainingJob","sagemaker:Describe*"],
		 "Resource":"arn:aws:sagemaker:*:111122223333:training-job/*",
		 "Condition":{"Bool":{"sagemaker:InterContainerTrafficEncryption":"true","sagemaker:NetworkIsolation":true},
		  "ArnLike":{"sagemaker:VolumeKmsKey":"arn:aws:kms:*:111122223333:key/*"},
		  "StringEquals":{"sagemaker:RequestTag/team":"ml"},
		  "ForAllValues:StringLike":{"aws:TagKeys":["team","cost-*"]}}},
		{"Effect":"Deny","NotAction":["kms:Decrypt","kms:GenerateDataKey*"],"Resource":"arn:aws:kms:*:*:key/*",
		 "Condition":{"StringNotEqualsIfExists":{"kms:ViaService":"sagemaker.us-east-1.amazonaws.com"}}}]}`,
	// Network and time conditions.
	`{"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"*","Resource":"*",
		"Condition":{"NotIpAddress":{"aws:SourceIp":["10.0.0.0/8","2001:db8::/32","127.0.0.1"]},
		 "DateGreaterThan":{"aws:CurrentTime":"2030-01-01T00:00:00Z"},
		 "NumericLessThanEquals":{"s3:max-keys":100},"Null":{"aws:TokenIssueTime":"true"},
		 "BinaryEquals":{"s3:x":"QmluYXJ5"}}}}`,
	// Trust policies.
	`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"sagemaker.amazonaws.com"},
		"Action":"sts:AssumeRole"}]}`,
	`{"Version":"2008-10-17","Statement":[{"Effect":"Allow",
		"Principal":{"AWS":["arn:aws:iam::111122223333:root","444455556666","arn:aws:iam::111122223333:role/ops"]},
		"Action":["sts:AssumeRole","sts:TagSession"],"Condition":{"StringEquals":{"sts:ExternalId":"x-1"}}}]}`,
	// Resource policy with NotPrincipal.
	`{"Version":"2012-10-17","Id":"bucket","Statement":[
		{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::pub/*"},
		{"Effect":"Deny","NotPrincipal":{"AWS":["arn:aws:sts::111122223333:assumed-role/ops/s",
		 "arn:aws:iam::111122223333:role/ops","arn:aws:iam::111122223333:root"]},
		 "Action":"s3:*","NotResource":"arn:aws:s3:::pub/*"}]}`,
	// Malformed ones, so the fuzzer starts from the error paths too.
	`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","NotAction":"iam:*","Resource":"*"}]}`,
	`{"Statement":{"Effect":"allow","Action":"x","Resource":"y","Condition":{"StringEqualz":{"a":"b"}}}}`,
	`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*","Effect":"Deny"}]}`,
	`{"Version":"2012-10-17","Statement":[`,
	`[]`,
}

func FuzzParse(f *testing.F) {
	for _, s := range seedPolicies {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		for _, trust := range []bool{false, true} {
			parse := Parse
			if trust {
				parse = ParseTrust
			}
			d, err := parse(doc)
			if err != nil {
				var me *MalformedError
				if !errors.As(err, &me) || me.Msg == "" {
					t.Fatalf("error %T %q is not a *MalformedError with a message", err, err)
				}
				if d != nil {
					t.Fatal("document returned with an error")
				}
				continue
			}
			checkParsed(t, d, trust)
		}
	})
}

// checkParsed asserts what Parse and ParseTrust promise about a document
// they accept.
func checkParsed(t *testing.T, d *Document, trust bool) {
	t.Helper()
	if len(d.Statements) == 0 {
		t.Fatal("accepted a document without statements")
	}
	for _, s := range d.Statements {
		if s.Effect != "Allow" && s.Effect != "Deny" {
			t.Fatalf("accepted Effect %q", s.Effect)
		}
		if (len(s.Action) == 0) == (len(s.NotAction) == 0) {
			t.Fatalf("want exactly one of Action and NotAction: %+v", s)
		}
		if s.Principal != nil && s.NotPrincipal != nil {
			t.Fatalf("both Principal and NotPrincipal: %+v", s)
		}
		hasResource := len(s.Resource) > 0 || len(s.NotResource) > 0
		if trust && (hasResource || s.Principal == nil) {
			t.Fatalf("trust statement with resource or without principal: %+v", s)
		}
		if !trust && (len(s.Resource) == 0) == (len(s.NotResource) == 0) {
			t.Fatalf("want exactly one of Resource and NotResource: %+v", s)
		}
		for op, keys := range s.Condition {
			if _, ok := parseOperator(op); !ok {
				t.Fatalf("accepted operator %q", op)
			}
			for k, vals := range keys {
				if len(vals) == 0 {
					t.Fatalf("condition key %q without values", k)
				}
			}
		}
	}
}

func FuzzEvaluate(f *testing.F) {
	for _, s := range seedPolicies {
		f.Add(s, "s3:GetObject", "arn:aws:s3:::data/home/alice/x", "arn:aws:sts::111122223333:assumed-role/ops/s",
			"aws:username", "alice")
		f.Add(s, "sagemaker:CreateTrainingJob", "arn:aws:sagemaker:us-east-1:111122223333:training-job/j",
			"sagemaker.amazonaws.com", "aws:SourceIp", "10.1.2.3")
	}
	f.Fuzz(func(t *testing.T, doc, action, resource, principal, key, value string) {
		d, err := Parse(doc)
		if err != nil {
			if d, err = ParseTrust(doc); err != nil {
				return
			}
		}
		ctx := map[string][]string{
			key:                   {value},
			"aws:username":        {"alice"},
			"aws:SecureTransport": {"true"},
			"aws:TagKeys":         {"team", value},
			"aws:CurrentTime":     {"2026-01-01T00:00:00Z"},
		}
		req := Request{Action: action, Resource: resource, Principal: principal, Context: ctx}
		got := Evaluate([]*Document{d}, req)
		if again := Evaluate([]*Document{d}, req); again != got {
			t.Fatalf("Evaluate is not deterministic: %v then %v", got, again)
		}
		var allows, denies bool
		for i := range d.Statements {
			s := &d.Statements[i]
			if s.Matches(req) {
				allows = allows || s.Effect == "Allow"
				denies = denies || s.Effect == "Deny"
			}
		}
		want := ImplicitDeny
		switch {
		case denies:
			want = ExplicitDeny
		case allows:
			want = Allow
		}
		if got != want {
			t.Fatalf("Evaluate = %v, but statements say %v", got, want)
		}
	})
}

func BenchmarkEvaluate(b *testing.B) {
	d := mustParse(b, `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["s3:GetObject","s3:PutObject","s3:List*"],
		 "Resource":["arn:aws:s3:::data","arn:aws:s3:::data/home/${aws:username}/*"]},
		{"Effect":"Allow","Action":"sagemaker:CreateTrainingJob","Resource":"arn:aws:sagemaker:*:111122223333:training-job/*",
		 "Condition":{"StringEquals":{"sagemaker:RequestTag/team":"ml"},"Bool":{"sagemaker:NetworkIsolation":"true"}}},
		{"Effect":"Deny","Action":"*","Resource":"*",
		 "Condition":{"Bool":{"aws:SecureTransport":"false"},"NotIpAddress":{"aws:SourceIp":"10.0.0.0/8"}}}]}`)
	docs := []*Document{d}
	req := Request{
		Action:    "s3:PutObject",
		Resource:  "arn:aws:s3:::data/home/alice/report.csv",
		Principal: "arn:aws:iam::111122223333:user/alice",
		Context: map[string][]string{
			"aws:username":        {"alice"},
			"aws:SecureTransport": {"true"},
			"aws:SourceIp":        {"10.1.2.3"},
			"aws:CurrentTime":     {"2026-01-01T00:00:00Z"},
		},
	}
	if got := Evaluate(docs, req); got != Allow {
		b.Fatalf("Evaluate = %v, want Allow", got)
	}
	b.ReportAllocs()
	for b.Loop() {
		Evaluate(docs, req)
	}
}

// FuzzGlob checks globMatch against regexp, which implements the same
// language by other means.
func FuzzGlob(f *testing.F) {
	f.Add("arn:aws:s3:::b/*", "arn:aws:s3:::b/k", false)
	f.Add("IAM:List*", "iam:ListUsers", true)
	f.Add("a?c*", "abcd", false)
	f.Add("*a*a*b", "aaaaaaaaaa", false)
	f.Add("s3:ÉT?", "S3:été", true)
	f.Fuzz(func(t *testing.T, pattern, name string, fold bool) {
		if !utf8.ValidString(pattern) || !utf8.ValidString(name) {
			return // regexp reads invalid UTF-8 differently; TestGlobMatch covers it
		}
		var re strings.Builder
		re.WriteString("^(?s)")
		if fold {
			re.WriteString("(?i)")
		}
		for _, r := range pattern {
			switch r {
			case '*':
				re.WriteString(".*")
			case '?':
				re.WriteString(".")
			default:
				re.WriteString(regexp.QuoteMeta(string(r)))
			}
		}
		re.WriteString("$")
		want := regexp.MustCompile(re.String()).MatchString(name)
		if got := globMatch(pattern, nil, name, fold); got != want {
			t.Fatalf("globMatch(%q, %q, fold=%v) = %v, regexp says %v", pattern, name, fold, got, want)
		}
	})
}
