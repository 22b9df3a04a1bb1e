package policy

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

const acct = "111122223333"

func mustParse(t testing.TB, doc string) *Document {
	t.Helper()
	d, err := Parse(doc)
	if err != nil {
		t.Fatalf("Parse(%s): %v", doc, err)
	}
	return d
}

func mustParseTrust(t testing.TB, doc string) *Document {
	t.Helper()
	d, err := ParseTrust(doc)
	if err != nil {
		t.Fatalf("ParseTrust(%s): %v", doc, err)
	}
	return d
}

// kv builds a request context from key, value pairs; a repeated key gets
// several values.
func kv(pairs ...string) map[string][]string {
	m := make(map[string][]string)
	for i := 0; i+1 < len(pairs); i += 2 {
		m[pairs[i]] = append(m[pairs[i]], pairs[i+1])
	}
	return m
}

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want Document
	}{
		{
			name: "single statement object and string elements",
			doc: `{"Version":"2012-10-17","Id":"p1","Statement":{"Sid":"A1","Effect":"Allow",
				"Action":"iam:ListUsers","Resource":"*"}}`,
			want: Document{Version: "2012-10-17", ID: "p1", Statements: []Statement{{
				Sid: "A1", Effect: "Allow", Action: []string{"iam:ListUsers"}, Resource: []string{"*"},
			}}},
		},
		{
			name: "arrays, NotAction, NotResource, no Version",
			doc: `{"Statement":[{"Effect":"Deny","NotAction":["s3:Get*","s3:List*"],
				"NotResource":["arn:aws:s3:::a","arn:aws:s3:::a/*"]}]}`,
			want: Document{Statements: []Statement{{
				Effect: "Deny", NotAction: []string{"s3:Get*", "s3:List*"},
				NotResource: []string{"arn:aws:s3:::a", "arn:aws:s3:::a/*"}, literalVars: true,
			}}},
		},
		{
			name: "condition values normalised to strings",
			doc: `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:ListBucket",
				"Resource":"arn:aws:s3:::b","Condition":{
				"Bool":{"aws:SecureTransport":true},
				"NumericLessThanEquals":{"s3:max-keys":[10, 2.5e1]},
				"StringLike":{"s3:prefix":["home/","home/${aws:username}/*"]}}}]}`,
			want: Document{Version: "2012-10-17", Statements: []Statement{{
				Effect: "Allow", Action: []string{"s3:ListBucket"}, Resource: []string{"arn:aws:s3:::b"},
				Condition: map[string]map[string][]string{
					"Bool":                  {"aws:SecureTransport": {"true"}},
					"NumericLessThanEquals": {"s3:max-keys": {"10", "2.5e1"}},
					"StringLike":            {"s3:prefix": {"home/", "home/${aws:username}/*"}},
				},
			}}},
		},
		{
			name: "resource policy with principals",
			doc: `{"Version":"2012-10-17","Statement":[
				{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/*"},
				{"Effect":"Allow","Principal":{"AWS":["111122223333","arn:aws:iam::111122223333:role/r"],
				 "Service":"sagemaker.amazonaws.com","Federated":"cognito-identity.amazonaws.com",
				 "CanonicalUser":"79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be"},
				 "Action":"s3:PutObject","Resource":"arn:aws:s3:::b/*"}]}`,
			want: Document{Version: "2012-10-17", Statements: []Statement{
				{Effect: "Allow", Principal: &Principals{Any: true}, Action: []string{"s3:GetObject"},
					Resource: []string{"arn:aws:s3:::b/*"}},
				{Effect: "Allow", Principal: &Principals{
					AWS:           []string{"111122223333", "arn:aws:iam::111122223333:role/r"},
					Service:       []string{"sagemaker.amazonaws.com"},
					Federated:     []string{"cognito-identity.amazonaws.com"},
					CanonicalUser: []string{"79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be"},
				}, Action: []string{"s3:PutObject"}, Resource: []string{"arn:aws:s3:::b/*"}},
			}},
		},
		{
			name: "abbreviated resource ARN and wildcard vendor",
			doc:  `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":["*","*:Get*"],"Resource":"arn:aws:s3:*"}}`,
			want: Document{Version: "2012-10-17", Statements: []Statement{{
				Effect: "Allow", Action: []string{"*", "*:Get*"}, Resource: []string{"arn:aws:s3:*"},
			}}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := mustParse(t, tc.doc)
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", *got, tc.want)
			}
		})
	}
}

func TestParseTrust(t *testing.T) {
	d := mustParseTrust(t, `{"Version":"2012-10-17","Statement":[{"Effect":"Allow",
		"Principal":{"Service":["sagemaker.amazonaws.com"]},"Action":"sts:AssumeRole"}]}`)
	s := d.Statements[0]
	if s.Principal == nil || !reflect.DeepEqual(s.Principal.Service, []string{"sagemaker.amazonaws.com"}) ||
		s.Resource != nil || s.NotResource != nil {
		t.Errorf("got %+v", s)
	}
	// A trust policy is not a valid identity policy: it has no Resource.
	if _, err := Parse(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow",
		"Principal":{"Service":"sagemaker.amazonaws.com"},"Action":"sts:AssumeRole"}]}`); err == nil {
		t.Error("Parse accepted a statement without Resource")
	}
}

func TestParseMalformed(t *testing.T) {
	const ok = `"Effect":"Allow","Action":"s3:GetObject","Resource":"*"`
	stmt := func(body string) string {
		return `{"Version":"2012-10-17","Statement":[{` + body + `}]}`
	}
	cond := func(c string) string { return stmt(ok + `,"Condition":` + c) }
	tests := []struct {
		name  string
		doc   string
		trust bool
		want  string // substring of the message
	}{
		{"bad JSON", `{"Version":"2012-10-17","Statement":[`, false, "invalid Json"},
		{"not JSON at all", `Allow everything`, false, "invalid Json"},
		{"empty", ``, false, "invalid Json"},
		{"trailing data", stmt(ok) + `{}`, false, "after the document"},
		{"top level array", `[` + stmt(ok) + `]`, false, "not a JSON object"},
		{"duplicate key", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Effect":"Deny","Action":"*","Resource":"*"}]}`, false, `duplicate key "Effect"`},
		{"unknown top element", `{"Version":"2012-10-17","Statements":[{` + ok + `}]}`, false, `unknown element "Statements"`},
		{"lower-case element", `{"version":"2012-10-17","Statement":[{` + ok + `}]}`, false, `unknown element "version"`},
		{"bad version", `{"Version":"2012-10-18","Statement":[{` + ok + `}]}`, false, "Version must be"},
		{"numeric version", `{"Version":2012,"Statement":[{` + ok + `}]}`, false, "Version must be"},
		{"no statement", `{"Version":"2012-10-17"}`, false, "no Statement"},
		{"empty statement list", `{"Version":"2012-10-17","Statement":[]}`, false, "Statement is empty"},
		{"statement is a string", `{"Version":"2012-10-17","Statement":["Allow"]}`, false, "not an object"},
		{"unknown statement element", stmt(ok + `,"Actions":"s3:*"`), false, `unknown element "Actions"`},
		{"bad effect", stmt(`"Effect":"Maybe","Action":"*","Resource":"*"`), false, "Invalid effect"},
		{"lower-case effect", stmt(`"Effect":"allow","Action":"*","Resource":"*"`), false, "Invalid effect"},
		{"missing effect", stmt(`"Action":"*","Resource":"*"`), false, "no Effect"},
		{"both Action and NotAction", stmt(ok + `,"NotAction":"s3:PutObject"`), false, "both Action and NotAction"},
		{"no action", stmt(`"Effect":"Allow","Resource":"*"`), false, "Policy statement must contain actions."},
		{"empty action list", stmt(`"Effect":"Allow","Action":[],"Resource":"*"`), false, "Policy statement must contain actions."},
		{"action is a number", stmt(`"Effect":"Allow","Action":7,"Resource":"*"`), false, "Action of statement 1 must be"},
		{"action without vendor", stmt(`"Effect":"Allow","Action":"GetObject","Resource":"*"`), false, "prefaced by a vendor"},
		{"action with two colons", stmt(`"Effect":"Allow","Action":"s3:Get:Object","Resource":"*"`), false, "only one colon"},
		{"bad vendor", stmt(`"Effect":"Allow","Action":"s 3:GetObject","Resource":"*"`), false, "Vendor s 3 is not valid"},
		{"missing resource in identity policy", stmt(`"Effect":"Allow","Action":"*"`), false, "Policy statement must contain resources."},
		{"both Resource and NotResource", stmt(ok + `,"NotResource":"*"`), false, "both Resource and NotResource"},
		{"resource not an ARN", stmt(`"Effect":"Allow","Action":"*","Resource":"my-bucket"`), false, "must be in ARN format"},
		{"resource without vendor", stmt(`"Effect":"Allow","Action":"*","Resource":"arn:aws::x"`), false, "must be in ARN format"},
		{"duplicate sid", `{"Version":"2012-10-17","Statement":[{"Sid":"A",` + ok + `},{"Sid":"A",` + ok + `}]}`, false, "must be unique"},
		{"sid not a string", stmt(`"Sid":1,` + ok), false, "Sid of statement 1"},
		{"unknown operator", cond(`{"StringEqualz":{"aws:username":"a"}}`), false, `unknown condition operator "StringEqualz"`},
		{"operator name case", cond(`{"stringequals":{"aws:username":"a"}}`), false, "unknown condition operator"},
		{"NullIfExists", cond(`{"NullIfExists":{"aws:username":"true"}}`), false, "unknown condition operator"},
		{"ForAnyValue:Null", cond(`{"ForAnyValue:Null":{"aws:username":"true"}}`), false, "unknown condition operator"},
		{"condition not an object", cond(`["StringEquals"]`), false, "Condition of statement 1 must be an object"},
		{"condition operator body not an object", cond(`{"StringEquals":"a"}`), false, "must map keys to values"},
		{"condition key without vendor", cond(`{"StringEquals":{"username":"a"}}`), false, "prefaced by a vendor"},
		{"condition value null", cond(`{"StringEquals":{"aws:username":null}}`), false, "condition key aws:username"},
		{"condition values empty", cond(`{"StringEquals":{"aws:username":[]}}`), false, "must not be empty"},
		{"condition value object", cond(`{"StringEquals":{"aws:username":{"a":1}}}`), false, "condition key aws:username"},
		{"bad number", cond(`{"NumericLessThan":{"s3:max-keys":"ten"}}`), false, `Invalid value "ten"`},
		{"hex number", cond(`{"NumericLessThan":{"s3:max-keys":"0x10"}}`), false, `Invalid value "0x10"`},
		{"bad date", cond(`{"DateLessThan":{"aws:CurrentTime":"2024-13-01"}}`), false, `Invalid value "2024-13-01"`},
		{"bad bool", cond(`{"Bool":{"aws:SecureTransport":"yes"}}`), false, `Invalid value "yes"`},
		{"bad null", cond(`{"Null":{"aws:username":"maybe"}}`), false, `Invalid value "maybe"`},
		{"bad IP", cond(`{"IpAddress":{"aws:SourceIp":"10.0.0.0/33"}}`), false, `Invalid value "10.0.0.0/33"`},
		{"bad base64", cond(`{"BinaryEquals":{"s3:x":"***"}}`), false, `Invalid value "***"`},
		{"principal string", stmt(ok + `,"Principal":"arn:aws:iam::111122223333:root"`), false, "Invalid principal in policy"},
		{"principal empty object", stmt(ok + `,"Principal":{}`), false, "Invalid principal in policy"},
		{"principal unknown type", stmt(ok + `,"Principal":{"User":"bob"}`), false, "Invalid principal in policy"},
		{"principal not an ARN", stmt(ok + `,"Principal":{"AWS":"bob"}`), false, `Invalid principal in policy: "AWS":"bob"`},
		{"principal wildcard ARN", stmt(ok + `,"Principal":{"AWS":"arn:aws:iam::111122223333:role/*"}`), false, "Invalid principal in policy"},
		{"principal empty list", stmt(ok + `,"Principal":{"AWS":[]}`), false, "Invalid principal in policy"},
		{"principal and NotPrincipal", stmt(ok + `,"Principal":"*","NotPrincipal":"*"`), false, "both Principal and NotPrincipal"},
		{"trust without principal", stmt(`"Effect":"Allow","Action":"sts:AssumeRole"`), true, "Missing required field Principal."},
		{"trust with resource", stmt(`"Effect":"Allow","Principal":"*","Action":"sts:AssumeRole","Resource":"*"`), true, "Has prohibited field Resource."},
		{"trust with NotResource", stmt(`"Effect":"Allow","Principal":"*","Action":"sts:AssumeRole","NotResource":"*"`), true, "Has prohibited field NotResource."},
		{"trust with NotPrincipal", stmt(`"Effect":"Deny","NotPrincipal":"*","Action":"sts:AssumeRole"`), true, "Has prohibited field NotPrincipal."},
		{"trust without action", stmt(`"Effect":"Allow","Principal":"*"`), true, "Policy statement must contain actions."},
		{"too deep", `{"Version":"2012-10-17","Statement":[{` + ok + `,"Condition":{"StringEquals":{"a:b":` +
			strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}}}]}`, false, "nests too deeply"},
		{"too large", `{"Version":"2012-10-17","Id":"` + strings.Repeat("x", MaxDocumentSize) + `","Statement":[{` + ok + `}]}`, false, "the limit is"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			parse := Parse
			if tc.trust {
				parse = ParseTrust
			}
			d, err := parse(tc.doc)
			if err == nil {
				t.Fatalf("accepted: %+v", d)
			}
			var me *MalformedError
			if !errors.As(err, &me) {
				t.Fatalf("error %T %v is not a *MalformedError", err, err)
			}
			if err.Error() != me.Msg {
				t.Errorf("Error() = %q, want the message %q", err.Error(), me.Msg)
			}
			if !strings.Contains(me.Msg, tc.want) {
				t.Errorf("message %q does not contain %q", me.Msg, tc.want)
			}
		})
	}
}

func TestEvaluate(t *testing.T) {
	allowS3 := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:Get*","s3:ListBucket"],
		"Resource":["arn:aws:s3:::data","arn:aws:s3:::data/*"]}]}`
	denyDelete := `{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"s3:Delete*","Resource":"*"}]}`
	allowAll := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}`
	denySecret := `{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"s3:*","Resource":"arn:aws:s3:::data/secret/*"}]}`
	notAction := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","NotAction":["iam:*","sts:*"],"Resource":"*"}]}`
	notResource := `{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"s3:*",
		"NotResource":["arn:aws:s3:::data","arn:aws:s3:::data/*"]}]}`
	wild := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sagemaker:*TrainingJob?",
		"Resource":"arn:aws:sagemaker:*:111122223333:training-job/team-?-*"}]}`

	obj := func(key string) string { return "arn:aws:s3:::data/" + key }
	tests := []struct {
		name     string
		docs     []string
		action   string
		resource string
		want     Decision
	}{
		{"no policies", nil, "s3:GetObject", obj("a"), ImplicitDeny},
		{"allowed", []string{allowS3}, "s3:GetObject", obj("a"), Allow},
		{"action not listed", []string{allowS3}, "s3:PutObject", obj("a"), ImplicitDeny},
		{"resource not listed", []string{allowS3}, "s3:GetObject", "arn:aws:s3:::other/a", ImplicitDeny},
		{"action case-insensitive", []string{allowS3}, "S3:getobject", obj("a"), Allow},
		{"resource case-sensitive", []string{allowS3}, "s3:GetObject", "arn:aws:s3:::DATA/a", ImplicitDeny},
		{"exact resource", []string{allowS3}, "s3:ListBucket", "arn:aws:s3:::data", Allow},
		{"deny beats allow in another document", []string{allowAll, denyDelete}, "s3:DeleteObject", obj("a"), ExplicitDeny},
		{"deny beats allow, deny first", []string{denyDelete, allowAll}, "s3:DeleteObject", obj("a"), ExplicitDeny},
		{"deny does not cover other actions", []string{allowAll, denyDelete}, "s3:PutObject", obj("a"), Allow},
		{"deny alone is not allow", []string{denyDelete}, "s3:GetObject", obj("a"), ImplicitDeny},
		{"deny on a prefix", []string{allowS3, denySecret}, "s3:GetObject", obj("secret/k"), ExplicitDeny},
		{"outside the denied prefix", []string{allowS3, denySecret}, "s3:GetObject", obj("public/k"), Allow},
		{"NotAction allows others", []string{notAction}, "s3:GetObject", "*", Allow},
		{"NotAction excludes listed", []string{notAction}, "iam:CreateUser", "*", ImplicitDeny},
		{"NotAction excludes case-insensitively", []string{notAction}, "STS:AssumeRole", "*", ImplicitDeny},
		{"NotResource deny outside", []string{allowAll, notResource}, "s3:GetObject", "arn:aws:s3:::other/a", ExplicitDeny},
		{"NotResource deny inside", []string{allowAll, notResource}, "s3:GetObject", obj("a"), Allow},
		{"NotResource deny other service", []string{allowAll, notResource}, "iam:ListUsers", "*", Allow},
		{"wildcards match", []string{wild}, "sagemaker:CreateTrainingJobs",
			"arn:aws:sagemaker:us-east-1:111122223333:training-job/team-a-42", Allow},
		{"? needs exactly one character", []string{wild}, "sagemaker:CreateTrainingJob",
			"arn:aws:sagemaker:us-east-1:111122223333:training-job/team-a-42", ImplicitDeny},
		{"? in resource", []string{wild}, "sagemaker:CreateTrainingJobs",
			"arn:aws:sagemaker:us-east-1:111122223333:training-job/team-ab-42", ImplicitDeny},
		{"* in resource spans colons", []string{allowAll}, "kms:Decrypt", "arn:aws:kms:us-east-1:111122223333:key/k", Allow},
		{"resource * matches *", []string{allowAll}, "iam:ListUsers", "*", Allow},
		{"ARN pattern does not match *", []string{allowS3}, "s3:ListAllMyBuckets", "*", ImplicitDeny},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var docs []*Document
			for _, d := range tc.docs {
				docs = append(docs, mustParse(t, d))
			}
			got := Evaluate(docs, Request{Action: tc.action, Resource: tc.resource})
			if got != tc.want {
				t.Errorf("Evaluate(%s on %s) = %v, want %v", tc.action, tc.resource, got, tc.want)
			}
		})
	}
}

func TestEvaluateIgnoresNilAndUnknownEffect(t *testing.T) {
	d := &Document{Statements: []Statement{
		{Effect: "allow", Action: []string{"*"}, Resource: []string{"*"}},
		{Effect: "Allow"}, // no action: matches nothing
	}}
	if got := Evaluate([]*Document{nil, d}, Request{Action: "s3:GetObject", Resource: "*"}); got != ImplicitDeny {
		t.Errorf("got %v, want ImplicitDeny", got)
	}
}

func TestConditions(t *testing.T) {
	const (
		arnJob   = "arn:aws:sagemaker:us-east-1:111122223333:training-job/job-1"
		arnKey   = "arn:aws:kms:us-east-1:111122223333:key/1234abcd"
		currTime = "aws:CurrentTime"
	)
	tests := []struct {
		name string
		cond string
		ctx  map[string][]string
		want bool
	}{
		// String operators.
		{"StringEquals match", `{"StringEquals":{"aws:username":"alice"}}`, kv("aws:username", "alice"), true},
		{"StringEquals mismatch", `{"StringEquals":{"aws:username":"alice"}}`, kv("aws:username", "bob"), false},
		{"StringEquals is case-sensitive", `{"StringEquals":{"aws:username":"alice"}}`, kv("aws:username", "Alice"), false},
		{"key names are case-insensitive", `{"StringEquals":{"aws:username":"alice"}}`, kv("AWS:UserName", "alice"), true},
		{"policy key case-insensitive too", `{"StringEquals":{"AWS:USERNAME":"alice"}}`, kv("aws:username", "alice"), true},
		{"StringEquals missing key", `{"StringEquals":{"aws:username":"alice"}}`, nil, false},
		{"any policy value", `{"StringEquals":{"aws:username":["bob","alice"]}}`, kv("aws:username", "alice"), true},
		{"StringNotEquals match", `{"StringNotEquals":{"aws:username":"alice"}}`, kv("aws:username", "alice"), false},
		{"StringNotEquals mismatch", `{"StringNotEquals":{"aws:username":"alice"}}`, kv("aws:username", "bob"), true},
		{"StringNotEquals all policy values", `{"StringNotEquals":{"aws:username":["bob","alice"]}}`, kv("aws:username", "alice"), false},
		{"StringNotEquals missing key", `{"StringNotEquals":{"aws:username":"alice"}}`, nil, true},
		{"StringEqualsIgnoreCase match", `{"StringEqualsIgnoreCase":{"aws:username":"ALICE"}}`, kv("aws:username", "alice"), true},
		{"StringEqualsIgnoreCase mismatch", `{"StringEqualsIgnoreCase":{"aws:username":"ALICE"}}`, kv("aws:username", "bob"), false},
		{"StringNotEqualsIgnoreCase match", `{"StringNotEqualsIgnoreCase":{"aws:username":"ALICE"}}`, kv("aws:username", "alice"), false},
		{"StringNotEqualsIgnoreCase mismatch", `{"StringNotEqualsIgnoreCase":{"aws:username":"ALICE"}}`, kv("aws:username", "bob"), true},
		{"StringLike *", `{"StringLike":{"s3:prefix":"home/*"}}`, kv("s3:prefix", "home/alice/x"), true},
		{"StringLike mismatch", `{"StringLike":{"s3:prefix":"home/*"}}`, kv("s3:prefix", "tmp/x"), false},
		{"StringLike ?", `{"StringLike":{"s3:prefix":"file?.txt"}}`, kv("s3:prefix", "file1.txt"), true},
		{"StringLike ? is one character", `{"StringLike":{"s3:prefix":"file?.txt"}}`, kv("s3:prefix", "file10.txt"), false},
		{"StringLike is case-sensitive", `{"StringLike":{"s3:prefix":"home/*"}}`, kv("s3:prefix", "HOME/x"), false},
		{"StringNotLike match", `{"StringNotLike":{"s3:prefix":"home/*"}}`, kv("s3:prefix", "home/x"), false},
		{"StringNotLike mismatch", `{"StringNotLike":{"s3:prefix":"home/*"}}`, kv("s3:prefix", "tmp/x"), true},
		{"StringNotLike missing key", `{"StringNotLike":{"s3:prefix":"home/*"}}`, nil, true},
		{"StringEquals on a service key", `{"StringEquals":{"kms:ViaService":"sagemaker.us-east-1.amazonaws.com"}}`,
			kv("kms:ViaService", "sagemaker.us-east-1.amazonaws.com"), true},
		{"StringEquals on a request tag", `{"StringEquals":{"sagemaker:RequestTag/team":"ml"}}`,
			kv("sagemaker:RequestTag/team", "ml"), true},
		{"StringEquals on a request tag, wrong value", `{"StringEquals":{"sagemaker:RequestTag/team":"ml"}}`,
			kv("sagemaker:RequestTag/team", "web"), false},

		// Numeric operators.
		{"NumericEquals", `{"NumericEquals":{"s3:max-keys":"10"}}`, kv("s3:max-keys", "10"), true},
		{"NumericEquals compares numbers", `{"NumericEquals":{"s3:max-keys":10}}`, kv("s3:max-keys", "10.0"), true},
		{"NumericEquals mismatch", `{"NumericEquals":{"s3:max-keys":"10"}}`, kv("s3:max-keys", "11"), false},
		{"NumericEquals large integers exact", `{"NumericEquals":{"s3:x":"9007199254740993"}}`, kv("s3:x", "9007199254740992"), false},
		{"NumericEquals non-number", `{"NumericEquals":{"s3:max-keys":"10"}}`, kv("s3:max-keys", "ten"), false},
		{"NumericNotEquals", `{"NumericNotEquals":{"s3:max-keys":"10"}}`, kv("s3:max-keys", "11"), true},
		{"NumericNotEquals equal", `{"NumericNotEquals":{"s3:max-keys":"10"}}`, kv("s3:max-keys", "10"), false},
		{"NumericLessThan", `{"NumericLessThan":{"s3:max-keys":"10"}}`, kv("s3:max-keys", "9"), true},
		{"NumericLessThan equal", `{"NumericLessThan":{"s3:max-keys":"10"}}`, kv("s3:max-keys", "10"), false},
		{"NumericLessThan negative and fraction", `{"NumericLessThan":{"s3:x":"-1.5"}}`, kv("s3:x", "-2"), true},
		{"NumericLessThanEquals", `{"NumericLessThanEquals":{"s3:max-keys":"10"}}`, kv("s3:max-keys", "10"), true},
		{"NumericLessThanEquals greater", `{"NumericLessThanEquals":{"s3:max-keys":"10"}}`, kv("s3:max-keys", "11"), false},
		{"NumericGreaterThan", `{"NumericGreaterThan":{"s3:max-keys":"10"}}`, kv("s3:max-keys", "11"), true},
		{"NumericGreaterThan equal", `{"NumericGreaterThan":{"s3:max-keys":"10"}}`, kv("s3:max-keys", "10"), false},
		{"NumericGreaterThanEquals", `{"NumericGreaterThanEquals":{"s3:max-keys":"1e1"}}`, kv("s3:max-keys", "10"), true},
		{"NumericGreaterThanEquals less", `{"NumericGreaterThanEquals":{"s3:max-keys":"10"}}`, kv("s3:max-keys", "9.99"), false},
		{"Numeric missing key", `{"NumericLessThan":{"s3:max-keys":"10"}}`, nil, false},

		// Date operators.
		{"DateGreaterThan", `{"DateGreaterThan":{"aws:CurrentTime":"2020-01-01T00:00:00Z"}}`, kv(currTime, "2024-05-01T12:00:00Z"), true},
		{"DateGreaterThan before", `{"DateGreaterThan":{"aws:CurrentTime":"2020-01-01T00:00:00Z"}}`, kv(currTime, "2019-12-31T23:59:59Z"), false},
		{"DateLessThan date only vs epoch", `{"DateLessThan":{"aws:CurrentTime":"2020-01-01"}}`, kv(currTime, "1500000000"), true},
		{"DateLessThan after", `{"DateLessThan":{"aws:CurrentTime":"2020-01-01"}}`, kv(currTime, "2020-01-01T00:00:01Z"), false},
		{"DateEquals across zones", `{"DateEquals":{"aws:CurrentTime":"2020-01-01T00:00:00Z"}}`, kv(currTime, "2020-01-01T01:00:00+01:00"), true},
		{"DateEquals epoch", `{"DateEquals":{"aws:CurrentTime":"2020-01-01T00:00:00Z"}}`, kv(currTime, "1577836800"), true},
		{"DateEquals fractional seconds", `{"DateEquals":{"aws:CurrentTime":"2020-01-01T00:00:00.500Z"}}`, kv(currTime, "2020-01-01T00:00:00.5Z"), true},
		{"DateEquals basic format", `{"DateEquals":{"aws:CurrentTime":"20200101T000000Z"}}`, kv(currTime, "2020-01-01T00:00:00Z"), true},
		{"DateEquals mismatch", `{"DateEquals":{"aws:CurrentTime":"2020-01-01"}}`, kv(currTime, "2020-01-02"), false},
		{"DateNotEquals", `{"DateNotEquals":{"aws:CurrentTime":"2020-01-01"}}`, kv(currTime, "2020-01-02"), true},
		{"DateNotEquals equal", `{"DateNotEquals":{"aws:CurrentTime":"2020-01-01"}}`, kv(currTime, "2020-01-01T00:00:00Z"), false},
		{"DateLessThanEquals equal", `{"DateLessThanEquals":{"aws:CurrentTime":"2020-01-01T00:00:00Z"}}`, kv(currTime, "2020-01-01T00:00:00Z"), true},
		{"DateLessThanEquals after", `{"DateLessThanEquals":{"aws:CurrentTime":"2020-01-01T00:00:00Z"}}`, kv(currTime, "2020-01-01T00:00:01Z"), false},
		{"DateGreaterThanEquals equal", `{"DateGreaterThanEquals":{"aws:CurrentTime":"2020-01-01T00:00:00Z"}}`, kv(currTime, "2020-01-01T00:00:00Z"), true},
		{"DateGreaterThanEquals before", `{"DateGreaterThanEquals":{"aws:CurrentTime":"2020-01-01T00:00:00Z"}}`, kv(currTime, "2019-01-01T00:00:00Z"), false},
		{"Date unparsable context value", `{"DateLessThan":{"aws:CurrentTime":"2020-01-01"}}`, kv(currTime, "yesterday"), false},

		// Bool and binary.
		{"Bool true", `{"Bool":{"aws:SecureTransport":"true"}}`, kv("aws:SecureTransport", "true"), true},
		{"Bool JSON literal", `{"Bool":{"aws:SecureTransport":true}}`, kv("aws:SecureTransport", "true"), true},
		{"Bool false", `{"Bool":{"aws:SecureTransport":"true"}}`, kv("aws:SecureTransport", "false"), false},
		{"Bool case-insensitive", `{"Bool":{"aws:SecureTransport":"false"}}`, kv("aws:SecureTransport", "FALSE"), true},
		{"Bool missing key", `{"Bool":{"aws:SecureTransport":"false"}}`, nil, false},
		{"Bool on a SageMaker key", `{"Bool":{"sagemaker:InterContainerTrafficEncryption":true}}`,
			kv("sagemaker:InterContainerTrafficEncryption", "true"), true},
		{"Bool on a SageMaker key, off", `{"Bool":{"sagemaker:NetworkIsolation":true}}`,
			kv("sagemaker:NetworkIsolation", "false"), false},
		{"BinaryEquals", `{"BinaryEquals":{"s3:x":"QmluYXJ5"}}`, kv("s3:x", "QmluYXJ5"), true},
		{"BinaryEquals unpadded", `{"BinaryEquals":{"s3:x":"YWI="}}`, kv("s3:x", "YWI"), true},
		{"BinaryEquals mismatch", `{"BinaryEquals":{"s3:x":"QmluYXJ5"}}`, kv("s3:x", "QmluYXJ6"), false},

		// IP addresses.
		{"IpAddress CIDR", `{"IpAddress":{"aws:SourceIp":"10.0.0.0/8"}}`, kv("aws:SourceIp", "10.1.2.3"), true},
		{"IpAddress outside", `{"IpAddress":{"aws:SourceIp":"10.0.0.0/8"}}`, kv("aws:SourceIp", "11.0.0.1"), false},
		{"IpAddress single address", `{"IpAddress":{"aws:SourceIp":"203.0.113.7"}}`, kv("aws:SourceIp", "203.0.113.7"), true},
		{"IpAddress single address mismatch", `{"IpAddress":{"aws:SourceIp":"203.0.113.7"}}`, kv("aws:SourceIp", "203.0.113.8"), false},
		{"IpAddress host bits set", `{"IpAddress":{"aws:SourceIp":"10.9.9.9/8"}}`, kv("aws:SourceIp", "10.1.2.3"), true},
		{"IpAddress IPv6", `{"IpAddress":{"aws:SourceIp":"2001:db8::/32"}}`, kv("aws:SourceIp", "2001:db8::1"), true},
		{"IpAddress IPv6 outside", `{"IpAddress":{"aws:SourceIp":"2001:db8::/32"}}`, kv("aws:SourceIp", "2001:db9::1"), false},
		{"IpAddress IPv4-mapped caller", `{"IpAddress":{"aws:SourceIp":"10.0.0.0/8"}}`, kv("aws:SourceIp", "::ffff:10.1.2.3"), true},
		{"IpAddress IPv4-mapped block", `{"IpAddress":{"aws:SourceIp":"::ffff:10.0.0.0/104"}}`, kv("aws:SourceIp", "10.1.2.3"), true},
		{"IpAddress v4 block, v6 caller", `{"IpAddress":{"aws:SourceIp":"0.0.0.0/0"}}`, kv("aws:SourceIp", "2001:db8::1"), false},
		{"IpAddress list", `{"IpAddress":{"aws:SourceIp":["192.0.2.0/24","127.0.0.1"]}}`, kv("aws:SourceIp", "127.0.0.1"), true},
		{"IpAddress garbage", `{"IpAddress":{"aws:SourceIp":"0.0.0.0/0"}}`, kv("aws:SourceIp", "localhost"), false},
		{"NotIpAddress outside", `{"NotIpAddress":{"aws:SourceIp":"10.0.0.0/8"}}`, kv("aws:SourceIp", "11.0.0.1"), true},
		{"NotIpAddress inside", `{"NotIpAddress":{"aws:SourceIp":"10.0.0.0/8"}}`, kv("aws:SourceIp", "10.0.0.1"), false},
		{"NotIpAddress missing key", `{"NotIpAddress":{"aws:SourceIp":"10.0.0.0/8"}}`, nil, true},

		// ARN operators.
		{"ArnEquals", `{"ArnEquals":{"aws:SourceArn":"` + arnJob + `"}}`, kv("aws:SourceArn", arnJob), true},
		{"ArnEquals mismatch", `{"ArnEquals":{"aws:SourceArn":"` + arnJob + `"}}`, kv("aws:SourceArn", arnJob+"x"), false},
		{"ArnLike wildcards per part", `{"ArnLike":{"aws:SourceArn":"arn:aws:sagemaker:*:111122223333:training-job/*"}}`, kv("aws:SourceArn", arnJob), true},
		{"ArnLike wrong account", `{"ArnLike":{"aws:SourceArn":"arn:aws:sagemaker:*:444455556666:training-job/*"}}`, kv("aws:SourceArn", arnJob), false},
		{"ArnLike * stays in its part", `{"ArnLike":{"aws:PrincipalArn":"arn:aws:iam::*:root"}}`, kv("aws:PrincipalArn", "arn:aws:iam::1:2:root"), false},
		{"StringLike * spans parts", `{"StringLike":{"aws:PrincipalArn":"arn:aws:iam::*:root"}}`, kv("aws:PrincipalArn", "arn:aws:iam::1:2:root"), true},
		{"ArnLike abbreviated", `{"ArnLike":{"aws:SourceArn":"arn:aws:sagemaker:*"}}`, kv("aws:SourceArn", arnJob), true},
		{"ArnLike not an ARN", `{"ArnLike":{"aws:SourceArn":"*"}}`, kv("aws:SourceArn", "job-1"), false},
		{"ArnLike on a SageMaker key", `{"ArnLike":{"sagemaker:VolumeKmsKey":"arn:aws:kms:*:111122223333:key/*"}}`,
			kv("sagemaker:VolumeKmsKey", arnKey), true},
		{"ArnNotEquals", `{"ArnNotEquals":{"aws:SourceArn":"` + arnJob + `"}}`, kv("aws:SourceArn", arnKey), true},
		{"ArnNotEquals equal", `{"ArnNotEquals":{"aws:SourceArn":"` + arnJob + `"}}`, kv("aws:SourceArn", arnJob), false},
		{"ArnNotLike", `{"ArnNotLike":{"aws:SourceArn":"arn:aws:kms:*"}}`, kv("aws:SourceArn", arnJob), true},
		{"ArnNotLike match", `{"ArnNotLike":{"aws:SourceArn":"arn:aws:kms:*"}}`, kv("aws:SourceArn", arnKey), false},
		{"ArnNotLike missing key", `{"ArnNotLike":{"aws:SourceArn":"arn:aws:kms:*"}}`, nil, true},

		// Null and IfExists.
		{"Null true, absent", `{"Null":{"aws:TokenIssueTime":"true"}}`, nil, true},
		{"Null true, present", `{"Null":{"aws:TokenIssueTime":"true"}}`, kv("aws:TokenIssueTime", "2024-01-01T00:00:00Z"), false},
		{"Null false, present", `{"Null":{"aws:TokenIssueTime":false}}`, kv("aws:TokenIssueTime", "2024-01-01T00:00:00Z"), true},
		{"Null false, absent", `{"Null":{"aws:TokenIssueTime":false}}`, nil, false},
		{"Null empty value list counts as absent", `{"Null":{"aws:TagKeys":"true"}}`, map[string][]string{"aws:TagKeys": {}}, true},
		{"IfExists absent", `{"StringEqualsIfExists":{"sagemaker:VolumeKmsKey":"k"}}`, nil, true},
		{"IfExists present and equal", `{"StringEqualsIfExists":{"sagemaker:VolumeKmsKey":"k"}}`, kv("sagemaker:VolumeKmsKey", "k"), true},
		{"IfExists present and different", `{"StringEqualsIfExists":{"sagemaker:VolumeKmsKey":"k"}}`, kv("sagemaker:VolumeKmsKey", "j"), false},
		{"negated IfExists present and equal", `{"StringNotEqualsIfExists":{"aws:username":"a"}}`, kv("aws:username", "a"), false},
		{"NumericLessThanIfExists absent", `{"NumericLessThanIfExists":{"s3:max-keys":"10"}}`, nil, true},
		{"BoolIfExists present false", `{"BoolIfExists":{"aws:MultiFactorAuthPresent":"true"}}`, kv("aws:MultiFactorAuthPresent", "false"), false},
		{"IpAddressIfExists absent", `{"IpAddressIfExists":{"aws:SourceIp":"10.0.0.0/8"}}`, nil, true},
		{"ArnLikeIfExists present", `{"ArnLikeIfExists":{"aws:SourceArn":"arn:aws:sagemaker:*"}}`, kv("aws:SourceArn", arnKey), false},
		{"DateLessThanIfExists absent", `{"DateLessThanIfExists":{"aws:CurrentTime":"2020-01-01"}}`, nil, true},

		// Set qualifiers and multivalued keys.
		{"ForAnyValue one matches", `{"ForAnyValue:StringEquals":{"aws:TagKeys":["a","b"]}}`, kv("aws:TagKeys", "c", "aws:TagKeys", "a"), true},
		{"ForAnyValue none matches", `{"ForAnyValue:StringEquals":{"aws:TagKeys":["a","b"]}}`, kv("aws:TagKeys", "c"), false},
		{"ForAnyValue missing key", `{"ForAnyValue:StringEquals":{"aws:TagKeys":["a","b"]}}`, nil, false},
		{"ForAnyValue negated", `{"ForAnyValue:StringNotEquals":{"aws:TagKeys":["a","b"]}}`, kv("aws:TagKeys", "a", "aws:TagKeys", "c"), true},
		{"ForAnyValue negated missing key", `{"ForAnyValue:StringNotEquals":{"aws:TagKeys":"a"}}`, nil, false},
		{"ForAllValues all match", `{"ForAllValues:StringEquals":{"aws:TagKeys":["a","b"]}}`, kv("aws:TagKeys", "a", "aws:TagKeys", "b"), true},
		{"ForAllValues one does not", `{"ForAllValues:StringEquals":{"aws:TagKeys":["a","b"]}}`, kv("aws:TagKeys", "a", "aws:TagKeys", "c"), false},
		{"ForAllValues missing key", `{"ForAllValues:StringEquals":{"aws:TagKeys":["a","b"]}}`, nil, true},
		{"ForAllValues StringLike", `{"ForAllValues:StringLike":{"aws:TagKeys":"team-*"}}`, kv("aws:TagKeys", "team-a", "aws:TagKeys", "team-b"), true},
		{"ForAllValues negated", `{"ForAllValues:StringNotEquals":{"aws:TagKeys":"secret"}}`, kv("aws:TagKeys", "a", "aws:TagKeys", "secret"), false},
		{"ForAnyValue IfExists missing key", `{"ForAnyValue:StringEqualsIfExists":{"aws:TagKeys":"a"}}`, nil, true},
		{"multivalued key, positive: any value", `{"StringEquals":{"aws:TagKeys":"a"}}`, kv("aws:TagKeys", "x", "aws:TagKeys", "a"), true},
		{"multivalued key, negated: no value", `{"StringNotEquals":{"aws:TagKeys":"a"}}`, kv("aws:TagKeys", "x", "aws:TagKeys", "a"), false},
		{"multivalued key, negated: none equal", `{"StringNotEquals":{"aws:TagKeys":"a"}}`, kv("aws:TagKeys", "x", "aws:TagKeys", "y"), true},

		// Combination.
		{"operators are ANDed", `{"StringEquals":{"aws:username":"alice"},"Bool":{"aws:SecureTransport":"true"}}`,
			kv("aws:username", "alice", "aws:SecureTransport", "false"), false},
		{"keys are ANDed", `{"StringEquals":{"aws:username":"alice","aws:PrincipalAccount":"111122223333"}}`,
			kv("aws:username", "alice", "aws:PrincipalAccount", "444455556666"), false},
		{"all conditions hold", `{"StringEquals":{"aws:username":"alice","aws:PrincipalAccount":"111122223333"},"Bool":{"aws:SecureTransport":"true"}}`,
			kv("aws:username", "alice", "aws:PrincipalAccount", "111122223333", "aws:SecureTransport", "true"), true},
		{"empty condition", `{}`, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := mustParse(t, `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":`+tc.cond+`}}`)
			req := Request{Action: "s3:GetObject", Resource: "*", Context: tc.ctx}
			if got := d.Statements[0].Matches(req); got != tc.want {
				t.Errorf("Matches = %v, want %v", got, tc.want)
			}
			want := ImplicitDeny
			if tc.want {
				want = Allow
			}
			if got := Evaluate([]*Document{d}, req); got != want {
				t.Errorf("Evaluate = %v, want %v", got, want)
			}
		})
	}
}

func TestUnknownOperatorNeverMatches(t *testing.T) {
	s := Statement{Effect: "Deny", Action: []string{"*"}, Resource: []string{"*"},
		Condition: map[string]map[string][]string{"StringEqualz": {"aws:username": {"a"}}}}
	if s.Matches(Request{Action: "s3:GetObject", Resource: "*", Context: kv("aws:username", "a")}) {
		t.Error("a statement with an unknown operator matched")
	}
}

func TestPolicyVariables(t *testing.T) {
	home := func(version, resource string) string {
		v := ""
		if version != "" {
			v = `"Version":"` + version + `",`
		}
		return `{` + v + `"Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"` + resource + `"}]}`
	}
	tests := []struct {
		name     string
		doc      string
		resource string
		ctx      map[string][]string
		want     Decision
	}{
		{"substituted", home("2012-10-17", "arn:aws:s3:::b/home/${aws:username}/*"),
			"arn:aws:s3:::b/home/alice/f", kv("aws:username", "alice"), Allow},
		{"someone else's home", home("2012-10-17", "arn:aws:s3:::b/home/${aws:username}/*"),
			"arn:aws:s3:::b/home/bob/f", kv("aws:username", "alice"), ImplicitDeny},
		{"variable name case-insensitive", home("2012-10-17", "arn:aws:s3:::b/home/${AWS:UserName}/*"),
			"arn:aws:s3:::b/home/alice/f", kv("aws:username", "alice"), Allow},
		{"missing key matches nothing", home("2012-10-17", "arn:aws:s3:::b/home/${aws:username}/*"),
			"arn:aws:s3:::b/home//f", nil, ImplicitDeny},
		{"multivalued key matches nothing", home("2012-10-17", "arn:aws:s3:::b/${aws:TagKeys}"),
			"arn:aws:s3:::b/a", kv("aws:TagKeys", "a", "aws:TagKeys", "b"), ImplicitDeny},
		{"default value", home("2012-10-17", "arn:aws:s3:::b/home/${aws:username, 'shared'}/*"),
			"arn:aws:s3:::b/home/shared/f", nil, Allow},
		{"default unused when present", home("2012-10-17", "arn:aws:s3:::b/home/${aws:username,'shared'}/*"),
			"arn:aws:s3:::b/home/shared/f", kv("aws:username", "alice"), ImplicitDeny},
		{"substituted text is literal", home("2012-10-17", "arn:aws:s3:::b/home/${aws:username}/f"),
			"arn:aws:s3:::b/home/anything/f", kv("aws:username", "*"), ImplicitDeny},
		{"substituted * matches itself", home("2012-10-17", "arn:aws:s3:::b/home/${aws:username}/f"),
			"arn:aws:s3:::b/home/*/f", kv("aws:username", "*"), Allow},
		{"${*} is a literal star", home("2012-10-17", "arn:aws:s3:::b/${*}"),
			"arn:aws:s3:::b/*", nil, Allow},
		{"${*} is not a wildcard", home("2012-10-17", "arn:aws:s3:::b/${*}"),
			"arn:aws:s3:::b/x", nil, ImplicitDeny},
		{"${?} is a literal question mark", home("2012-10-17", "arn:aws:s3:::b/a${?}"),
			"arn:aws:s3:::b/a?", nil, Allow},
		{"${$} is a literal dollar", home("2012-10-17", "arn:aws:s3:::b/${$}{x}"),
			"arn:aws:s3:::b/${x}", nil, Allow},
		{"unterminated is literal", home("2012-10-17", "arn:aws:s3:::b/${aws:username"),
			"arn:aws:s3:::b/${aws:username", kv("aws:username", "alice"), Allow},
		{"2008-10-17 keeps it literal", home("2008-10-17", "arn:aws:s3:::b/${aws:username}"),
			"arn:aws:s3:::b/${aws:username}", kv("aws:username", "alice"), Allow},
		{"2008-10-17 does not substitute", home("2008-10-17", "arn:aws:s3:::b/${aws:username}"),
			"arn:aws:s3:::b/alice", kv("aws:username", "alice"), ImplicitDeny},
		{"no Version does not substitute", home("", "arn:aws:s3:::b/${aws:username}"),
			"arn:aws:s3:::b/alice", kv("aws:username", "alice"), ImplicitDeny},
		{"PrincipalArn variable", home("2012-10-17", "arn:aws:s3:::b/${aws:PrincipalArn}"),
			"arn:aws:s3:::b/arn:aws:iam::111122223333:user/alice", kv("aws:PrincipalArn", "arn:aws:iam::111122223333:user/alice"), Allow},
		{"condition value variable", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:ListBucket",
			"Resource":"arn:aws:s3:::b","Condition":{"StringLike":{"s3:prefix":["home/${aws:username}/*"]}}}]}`,
			"arn:aws:s3:::b", kv("aws:username", "alice", "s3:prefix", "home/alice/docs/"), Allow},
		{"condition value variable, other prefix", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:ListBucket",
			"Resource":"arn:aws:s3:::b","Condition":{"StringLike":{"s3:prefix":["home/${aws:username}/*"]}}}]}`,
			"arn:aws:s3:::b", kv("aws:username", "alice", "s3:prefix", "home/bob/"), ImplicitDeny},
		{"condition variable missing", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:ListBucket",
			"Resource":"arn:aws:s3:::b","Condition":{"StringEquals":{"s3:prefix":"${aws:username}"}}}]}`,
			"arn:aws:s3:::b", kv("s3:prefix", "${aws:username}"), ImplicitDeny},
		{"ArnEquals with variable", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:ListBucket",
			"Resource":"*","Condition":{"ArnEquals":{"aws:SourceArn":"arn:aws:iam::111122223333:user/${aws:username}"}}}]}`,
			"*", kv("aws:username", "alice", "aws:SourceArn", "arn:aws:iam::111122223333:user/alice"), Allow},
		{"missing variable in a NotResource deny still denies", `{"Version":"2012-10-17","Statement":[
			{"Effect":"Allow","Action":"s3:*","Resource":"*"},
			{"Effect":"Deny","Action":"s3:*","NotResource":"arn:aws:s3:::b/home/${aws:username}/*"}]}`,
			"arn:aws:s3:::b/home/alice/f", nil, ExplicitDeny},
		{"NotResource deny exempts own home", `{"Version":"2012-10-17","Statement":[
			{"Effect":"Allow","Action":"s3:*","Resource":"*"},
			{"Effect":"Deny","Action":"s3:*","NotResource":"arn:aws:s3:::b/home/${aws:username}/*"}]}`,
			"arn:aws:s3:::b/home/alice/f", kv("aws:username", "alice"), Allow},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := mustParse(t, tc.doc)
			got := Evaluate([]*Document{d}, Request{Action: "s3:ListBucket", Resource: tc.resource, Context: tc.ctx})
			if got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPrincipal(t *testing.T) {
	const (
		role     = "arn:aws:iam::111122223333:role/ops"
		pathRole = "arn:aws:iam::111122223333:role/team/a/ops"
		session  = "arn:aws:sts::111122223333:assumed-role/ops/alice"
		user     = "arn:aws:iam::111122223333:user/alice"
		other    = "arn:aws:iam::444455556666:user/mallory"
		root     = "arn:aws:iam::111122223333:root"
	)
	tests := []struct {
		name      string
		principal string // the Principal element
		caller    string
		account   string
		want      bool
	}{
		{"role ARN, its session", `{"AWS":"` + role + `"}`, session, "", true},
		{"role ARN with path, its session", `{"AWS":"` + pathRole + `"}`, session, "", true},
		{"role ARN, the role itself", `{"AWS":"` + role + `"}`, role, "", true},
		{"role ARN, session of another role", `{"AWS":"` + role + `"}`, "arn:aws:sts::111122223333:assumed-role/dev/alice", "", false},
		{"role ARN, same name in another account", `{"AWS":"` + role + `"}`, "arn:aws:sts::444455556666:assumed-role/ops/alice", "", false},
		{"role ARN, a user", `{"AWS":"` + role + `"}`, user, "", false},
		{"session ARN, that session", `{"AWS":"` + session + `"}`, session, "", true},
		{"session ARN, another session", `{"AWS":"` + session + `"}`, "arn:aws:sts::111122223333:assumed-role/ops/bob", "", false},
		{"user ARN, that user", `{"AWS":"` + user + `"}`, user, "", true},
		{"user ARN, another user", `{"AWS":"` + user + `"}`, "arn:aws:iam::111122223333:user/bob", "", false},
		{"account root, user of the account", `{"AWS":"` + root + `"}`, user, "", true},
		{"account root, session of the account", `{"AWS":"` + root + `"}`, session, "", true},
		{"account root, the root user", `{"AWS":"` + root + `"}`, root, "", true},
		{"account root, other account", `{"AWS":"` + root + `"}`, other, "", false},
		{"account root, other partition", `{"AWS":"arn:aws-cn:iam::111122223333:root"}`, user, "", false},
		{"bare account, user of the account", `{"AWS":"111122223333"}`, user, "", true},
		{"bare account, other account", `{"AWS":"111122223333"}`, other, "", false},
		{"bare account from PrincipalAccount", `{"AWS":"111122223333"}`, "AIDAEXAMPLEEXAMPLE01", acct, true},
		{"PrincipalAccount wins over the ARN", `{"AWS":"111122223333"}`, other, "444455556666", false},
		{"account, anonymous caller", `{"AWS":"111122223333"}`, "", "", false},
		{"service principal", `{"Service":"sagemaker.amazonaws.com"}`, "sagemaker.amazonaws.com", "", true},
		{"service principal, list", `{"Service":["ec2.amazonaws.com","sagemaker.amazonaws.com"]}`, "sagemaker.amazonaws.com", "", true},
		{"service principal, other service", `{"Service":"sagemaker.amazonaws.com"}`, "ec2.amazonaws.com", "", false},
		{"service principal, a user", `{"Service":"sagemaker.amazonaws.com"}`, user, "", false},
		{"AWS entry does not name a service", `{"AWS":"` + root + `"}`, "sagemaker.amazonaws.com", "", false},
		{"federated", `{"Federated":"cognito-identity.amazonaws.com"}`, "cognito-identity.amazonaws.com", "", true},
		{`"*"`, `"*"`, user, "", true},
		{`"*", service`, `"*"`, "sagemaker.amazonaws.com", "", true},
		{`"*", anonymous`, `"*"`, "", "", true},
		{`AWS "*"`, `{"AWS":"*"}`, other, "", true},
		{"mixed list", `{"AWS":["` + user + `","444455556666"]}`, other, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := mustParseTrust(t, `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":`+
				tc.principal+`,"Action":"sts:AssumeRole"}]}`)
			req := Request{Action: "sts:AssumeRole", Resource: role, Principal: tc.caller, PrincipalAccount: tc.account}
			want := ImplicitDeny
			if tc.want {
				want = Allow
			}
			if got := Evaluate([]*Document{d}, req); got != want {
				t.Errorf("got %v, want %v", got, want)
			}
		})
	}
}

func TestNotPrincipal(t *testing.T) {
	const (
		role    = "arn:aws:iam::111122223333:role/ops"
		session = "arn:aws:sts::111122223333:assumed-role/ops/alice"
		user    = "arn:aws:iam::111122223333:user/alice"
		root    = "arn:aws:iam::111122223333:root"
	)
	tests := []struct {
		name         string
		notPrincipal string
		caller       string
		want         Decision
	}{
		{"user and account named: exempt", `{"AWS":["` + user + `","` + root + `"]}`, user, Allow},
		{"user named without account: denied", `{"AWS":"` + user + `"}`, user, ExplicitDeny},
		{"bare account also counts", `{"AWS":["` + user + `","111122223333"]}`, user, Allow},
		{"session, role and account named: exempt", `{"AWS":["` + session + `","` + role + `","` + root + `"]}`, session, Allow},
		{"role and account without session: denied", `{"AWS":["` + role + `","` + root + `"]}`, session, ExplicitDeny},
		{"someone else: denied", `{"AWS":["` + user + `","` + root + `"]}`, "arn:aws:iam::111122223333:user/bob", ExplicitDeny},
		{"anonymous: denied", `{"AWS":["` + user + `","` + root + `"]}`, "", ExplicitDeny},
		{"service named: exempt", `{"Service":"sagemaker.amazonaws.com"}`, "sagemaker.amazonaws.com", Allow},
		{"everyone named: nobody denied", `"*"`, user, Allow},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := mustParse(t, `{"Version":"2012-10-17","Statement":[
				{"Effect":"Allow","Principal":"*","Action":"s3:*","Resource":"*"},
				{"Effect":"Deny","NotPrincipal":`+tc.notPrincipal+`,"Action":"s3:*","Resource":"*"}]}`)
			req := Request{Action: "s3:GetObject", Resource: "arn:aws:s3:::b/k", Principal: tc.caller}
			if got := Evaluate([]*Document{d}, req); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestGlobMatch(t *testing.T) {
	tests := []struct {
		pattern, name string
		fold, want    bool
	}{
		{"", "", false, true},
		{"", "a", false, false},
		{"*", "", false, true},
		{"*", "anything:at/all", false, true},
		{"?", "", false, false},
		{"?", "é", false, true},
		{"a?c", "abc", false, true},
		{"a?c", "ac", false, false},
		{"a*", "abc", false, true},
		{"*c", "abc", false, true},
		{"*b*", "abc", false, true},
		{"a*b*c", "aXbYbZc", false, true},
		{"a*b*c", "aXbYbZ", false, false},
		{"**", "x", false, true},
		{"*a*a*a*a*a*a*b", strings.Repeat("a", 64), false, false},
		{"IAM:List*", "iam:ListUsers", true, true},
		{"IAM:List*", "iam:ListUsers", false, false},
		{"s3:ÉTÉ", "s3:été", true, true},
		{"s3:get?bject", "S3:GETOBJECT", true, true},
		{"\xff*", "\xffabc", false, true},
		{"\xff", "\xfe", false, false},
	}
	for _, tc := range tests {
		if got := globMatch(tc.pattern, nil, tc.name, tc.fold); got != tc.want {
			t.Errorf("globMatch(%q, %q, fold=%v) = %v, want %v", tc.pattern, tc.name, tc.fold, got, tc.want)
		}
	}
}

func TestParseDate(t *testing.T) {
	tests := []struct {
		in   string
		want int64 // Unix seconds; -1 when invalid
	}{
		{"0", 0},
		{"1700000000", 1700000000},
		{"2024", 2024}, // digits only are epoch seconds, as in IAM
		{"2024-05", 1714521600},
		{"2024-05-01", 1714521600},
		{"2024-05-01T12", 1714564800},
		{"2024-05-01T12:30", 1714566600},
		{"2024-05-01T12:30:15Z", 1714566615},
		{"2024-05-01t12:30:15z", 1714566615},
		{"2024-05-01T12:30:15.123456789123Z", 1714566615},
		{"2024-05-01T14:30:15+02:00", 1714566615},
		{"2024-05-01T10:30:15-0200", 1714566615},
		{"20240501T123015Z", 1714566615},
		{"2024-02-30", -1},
		{"2024-05-01T24:00:00Z", -1},
		{"2024-05-01T12:30:15+", -1},
		{"2024-05-01T14:30:15+02", 1714566615},
		{"2024-05-01T14:30:15+02:", -1},
		{"2024-05-01 12:30:15", -1},
		{"99999999999999999999", -1},
		{"", -1},
		{"-5", -1},
	}
	for _, tc := range tests {
		got, ok := parseDate(tc.in)
		if (tc.want < 0) != !ok || (ok && got.sec != tc.want) {
			t.Errorf("parseDate(%q) = %d, %v; want %d", tc.in, got.sec, ok, tc.want)
		}
	}
}

func TestDecisionString(t *testing.T) {
	for d, want := range map[Decision]string{
		ImplicitDeny: "ImplicitDeny", Allow: "Allow", ExplicitDeny: "ExplicitDeny", Decision(7): "Decision(7)",
	} {
		if got := d.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int(d), got, want)
		}
	}
}

func ExampleEvaluate() {
	identity, err := Parse(`{
		"Version": "2012-10-17",
		"Statement": [
			{"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::data/*"},
			{"Effect": "Deny", "Action": "s3:*", "Resource": "*",
			 "Condition": {"Bool": {"aws:SecureTransport": "false"}}}
		]}`)
	if err != nil {
		fmt.Println(err)
		return
	}
	req := Request{
		Action:   "s3:GetObject",
		Resource: "arn:aws:s3:::data/report.csv",
		Context:  map[string][]string{"aws:SecureTransport": {"false"}},
	}
	fmt.Println(Evaluate([]*Document{identity}, req))
	req.Context["aws:SecureTransport"] = []string{"true"}
	fmt.Println(Evaluate([]*Document{identity}, req))
	// Output:
	// ExplicitDeny
	// Allow
}
