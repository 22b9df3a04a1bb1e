package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"convoy/test/e2e/harness"
)

// awsJSON runs an aws CLI command that must succeed and decodes its output.
func awsJSON(t *testing.T, c *harness.Convoy, cli string, args []string, env ...string) map[string]any {
	t.Helper()
	r := c.AWS(t, cli, append(args, "--output", "json"), env...)
	if r.Err != nil {
		t.Fatalf("aws %v: %v\n%s", args, r.Err, r.Stderr)
	}
	var out map[string]any
	if strings.TrimSpace(r.Stdout) == "" {
		return map[string]any{}
	}
	if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil {
		t.Fatalf("aws %v: output is not JSON: %v\n%s", args, err, r.Stdout)
	}
	return out
}

// awsFails runs an aws CLI command that must fail with the AWS error code.
func awsFails(t *testing.T, c *harness.Convoy, cli string, code string, args []string, env ...string) {
	t.Helper()
	r := c.AWS(t, cli, args, append(env, "AWS_MAX_ATTEMPTS=1")...)
	if r.Err == nil || !strings.Contains(r.Stderr, "("+code+")") {
		t.Fatalf("aws %v: want error %s, got err %v\nstdout %s\nstderr %s", args, code, r.Err, r.Stdout, r.Stderr)
	}
}

func str(m map[string]any, path ...string) string {
	var v any = m
	for _, p := range path {
		mm, ok := v.(map[string]any)
		if !ok {
			return ""
		}
		v = mm[p]
	}
	s, _ := v.(string)
	return s
}

func creds(akid, secret, token string) []string {
	env := []string{"AWS_ACCESS_KEY_ID=" + akid, "AWS_SECRET_ACCESS_KEY=" + secret}
	if token != "" {
		return append(env, "AWS_SESSION_TOKEN="+token)
	}
	return append(env, "!AWS_SESSION_TOKEN")
}

// Signatures are checked: the admin key works, a wrong secret, no signature
// and a client clock 20 minutes off are each refused with AWS's code.
func TestSigV4AuthenticationWithAWSCLI(t *testing.T) {
	faketime := harness.Tool(t, "faketime")
	c := harness.Start(t, harness.Options{})
	account := ""
	for name, cli := range harness.AWSCLIs(t) {
		t.Run(name, func(t *testing.T) {
			id := awsJSON(t, c, cli, []string{"sts", "get-caller-identity"})
			account = str(id, "Account")
			if str(id, "Arn") != "arn:aws:iam::"+account+":user/admin" || len(account) != 12 {
				t.Fatalf("get-caller-identity: %v", id)
			}
			awsFails(t, c, cli, "SignatureDoesNotMatch", []string{"sts", "get-caller-identity"},
				"AWS_SECRET_ACCESS_KEY=wrong"+c.Env["AWS_SECRET_ACCESS_KEY"][5:])
			awsFails(t, c, cli, "InvalidClientTokenId", []string{"sts", "get-caller-identity"}, "AWS_ACCESS_KEY_ID=AKIAUNKNOWNKEY000000")
			awsFails(t, c, cli, "MissingAuthenticationToken", []string{"sts", "get-caller-identity", "--no-sign-request"})
			awsFails(t, c, cli, "SignatureDoesNotMatch", []string{"iam", "list-users"},
				"AWS_SECRET_ACCESS_KEY=wrong"+c.Env["AWS_SECRET_ACCESS_KEY"][5:])
			awsFails(t, c, cli, "InvalidSignatureException", []string{"sagemaker", "list-training-jobs"},
				"AWS_SECRET_ACCESS_KEY=wrong"+c.Env["AWS_SECRET_ACCESS_KEY"][5:])

			for _, skew := range []string{"+20m", "-20m"} {
				cmd := exec.Command(faketime, "-f", skew, cli, "--endpoint-url", c.Endpoint, "sts", "get-caller-identity")
				cmd.Env = c.ClientEnv("AWS_MAX_ATTEMPTS=1")
				out, err := cmd.CombinedOutput()
				if err == nil || !strings.Contains(string(out), "RequestTimeTooSkewed") {
					t.Fatalf("clock %s: want RequestTimeTooSkewed, got %v\n%s", skew, err, out)
				}
			}
		})
	}
}

// Users without a policy are denied (but may ask who they are), an allowing
// inline policy lets them in, an explicit Deny overrides it; roles are
// assumed through their trust policy, their credentials expire, and a
// tampered session token is refused.
func TestIAMPoliciesAndSTSWithAWSCLI(t *testing.T) {
	c := harness.Start(t, harness.Options{Args: []string{"--sts-min-session-duration", "2s"}})
	for name, cli := range harness.AWSCLIs(t) {
		t.Run(name, func(t *testing.T) {
			user := "bob-" + strings.NewReplacer("/", "", ".", "").Replace(name)
			u := awsJSON(t, c, cli, []string{"iam", "create-user", "--user-name", user})
			userARN := str(u, "User", "Arn")
			k := awsJSON(t, c, cli, []string{"iam", "create-access-key", "--user-name", user})
			akid, secret := str(k, "AccessKey", "AccessKeyId"), str(k, "AccessKey", "SecretAccessKey")
			if !strings.HasPrefix(akid, "AKIA") || len(secret) != 40 {
				t.Fatalf("create-access-key: %v", k)
			}
			bob := creds(akid, secret, "")

			if got := str(awsJSON(t, c, cli, []string{"sts", "get-caller-identity"}, bob...), "Arn"); got != userARN {
				t.Fatalf("bob is %q, want %q", got, userARN)
			}
			awsFails(t, c, cli, "AccessDenied", []string{"iam", "list-users"}, bob...)

			allow := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["iam:ListUsers","iam:GetUser"],"Resource":"*","Condition":{"Bool":{"aws:SecureTransport":"true"}}}]}`
			awsJSON(t, c, cli, []string{"iam", "put-user-policy", "--user-name", user, "--policy-name", "list", "--policy-document", allow})
			got := awsJSON(t, c, cli, []string{"iam", "get-user-policy", "--user-name", user, "--policy-name", "list"})
			if doc, ok := got["PolicyDocument"].(map[string]any); !ok || doc["Version"] != "2012-10-17" {
				t.Fatalf("get-user-policy does not round-trip the document: %v", got)
			}
			users := awsJSON(t, c, cli, []string{"iam", "list-users"}, bob...)
			if list, _ := users["Users"].([]any); len(list) < 2 {
				t.Fatalf("list-users as bob: %v", users)
			}
			deny := `{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"iam:List*","Resource":"*"}]}`
			awsJSON(t, c, cli, []string{"iam", "put-user-policy", "--user-name", user, "--policy-name", "deny", "--policy-document", deny})
			awsFails(t, c, cli, "AccessDenied", []string{"iam", "list-users"}, bob...)
			awsJSON(t, c, cli, []string{"iam", "get-user", "--user-name", user}, bob...) // still allowed
			awsFails(t, c, cli, "MalformedPolicyDocument", []string{"iam", "put-user-policy", "--user-name", user,
				"--policy-name", "bad", "--policy-document", `{"Statement":[{"Effect":"Maybe","Action":"*","Resource":"*"}]}`})

			// A role bob may assume.
			role := "trainer-" + user
			trust := fmt.Sprintf(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":%q},"Action":"sts:AssumeRole"}]}`, userARN)
			r := awsJSON(t, c, cli, []string{"iam", "create-role", "--role-name", role, "--assume-role-policy-document", trust})
			roleARN := str(r, "Role", "Arn")
			rolePolicy := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iam:ListRoles","Resource":"*"}]}`
			awsJSON(t, c, cli, []string{"iam", "put-role-policy", "--role-name", role, "--policy-name", "p", "--policy-document", rolePolicy})

			// The admin is not in the trust policy and, with a trust policy
			// naming bob only, may not assume it either... unless its own
			// policy allows it (same account): AdministratorAccess does not
			// make it a trusted principal.
			awsFails(t, c, cli, "AccessDenied", []string{"sts", "assume-role", "--role-arn", roleARN, "--role-session-name", "intruder",
				"--duration-seconds", "900"})

			a := awsJSON(t, c, cli, []string{"sts", "assume-role", "--role-arn", roleARN, "--role-session-name", "run-1",
				"--duration-seconds", "900"}, bob...)
			tmp := creds(str(a, "Credentials", "AccessKeyId"), str(a, "Credentials", "SecretAccessKey"), str(a, "Credentials", "SessionToken"))
			if !strings.HasPrefix(str(a, "Credentials", "AccessKeyId"), "ASIA") {
				t.Fatalf("assume-role: %v", a)
			}
			wantARN := strings.Replace(strings.Replace(roleARN, ":iam:", ":sts:", 1), ":role/", ":assumed-role/", 1) + "/run-1"
			if got := str(awsJSON(t, c, cli, []string{"sts", "get-caller-identity"}, tmp...), "Arn"); got != wantARN {
				t.Fatalf("assumed identity %q, want %q", got, wantARN)
			}
			awsJSON(t, c, cli, []string{"iam", "list-roles"}, tmp...)
			awsFails(t, c, cli, "AccessDenied", []string{"iam", "list-users"}, tmp...)

			// One changed character of the session token.
			tok := str(a, "Credentials", "SessionToken")
			i := len(tok) / 2
			flip := "A"
			if tok[i] == 'A' {
				flip = "B"
			}
			bad := creds(str(a, "Credentials", "AccessKeyId"), str(a, "Credentials", "SecretAccessKey"), tok[:i]+flip+tok[i+1:])
			awsFails(t, c, cli, "InvalidClientTokenId", []string{"sts", "get-caller-identity"}, bad...)
			// Another session's token with this key ID.
			other := awsJSON(t, c, cli, []string{"sts", "get-session-token", "--duration-seconds", "900"}, bob...)
			swapped := creds(str(a, "Credentials", "AccessKeyId"), str(a, "Credentials", "SecretAccessKey"), str(other, "Credentials", "SessionToken"))
			awsFails(t, c, cli, "InvalidClientTokenId", []string{"sts", "get-caller-identity"}, swapped...)
			// Session credentials cannot mint session tokens.
			awsFails(t, c, cli, "AccessDenied", []string{"sts", "get-session-token"}, tmp...)

			// Deleting a user with keys and policies is refused until they go.
			awsFails(t, c, cli, "DeleteConflict", []string{"iam", "delete-user", "--user-name", user})
		})
	}
}

// Temporary credentials stop working when they expire. The aws CLI will not
// ask for less than 900 s, so boto3 (with client-side validation off) asks
// for 3 s from a convoy started to allow that.
func TestTemporaryCredentialsExpire(t *testing.T) {
	py := harness.Tool(t, "python3")
	c := harness.Start(t, harness.Options{Args: []string{"--sts-min-session-duration", "2s"}})
	script := `
import os, time, datetime, boto3, botocore.config, botocore.exceptions as e
cfg = botocore.config.Config(parameter_validation=False, retries={"max_attempts": 1})
ep = os.environ["CONVOY_ENDPOINT"]
sts = boto3.client("sts", endpoint_url=ep, config=cfg)
c = sts.get_session_token(DurationSeconds=3)["Credentials"]
tmp = boto3.client("sts", endpoint_url=ep, config=cfg, aws_access_key_id=c["AccessKeyId"],
                   aws_secret_access_key=c["SecretAccessKey"], aws_session_token=c["SessionToken"])
print("before", tmp.get_caller_identity()["Arn"])
time.sleep(max(0, (c["Expiration"] - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) + 1.5)
try:
    tmp.get_caller_identity()
    print("after OK")
except e.ClientError as err:
    print("after", err.response["Error"]["Code"])
try:
    sts.get_session_token(DurationSeconds=1)
    print("short OK")
except e.ClientError as err:
    print("short", err.response["Error"]["Code"])
`
	cmd := exec.Command(py, "-c", script)
	cmd.Env = c.ClientEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("boto3: %v\n%s", err, out)
	}
	want := "before arn:aws:iam::"
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], want) || !strings.HasSuffix(lines[0], ":user/admin") ||
		lines[1] != "after ExpiredToken" || lines[2] != "short ValidationError" {
		t.Fatalf("boto3 session lifecycle:\n%s", out)
	}
}

// A presigned URL made by boto3 works with curl until it expires, and not
// at all once one character of it is changed.
func TestPresignedURLWithBoto3AndCurl(t *testing.T) {
	curl := harness.Tool(t, "curl")
	py := harness.Tool(t, "python3")
	c := harness.Start(t, harness.Options{})
	presign := func(expires int) string {
		script := fmt.Sprintf(`
import os, boto3
s = boto3.client("sts", endpoint_url=os.environ["CONVOY_ENDPOINT"])
print(s.generate_presigned_url("get_caller_identity", ExpiresIn=%d, HttpMethod="GET"))`, expires)
		cmd := exec.Command(py, "-c", script)
		cmd.Env = c.ClientEnv()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("presign: %v\n%s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	fetch := func(url string) (int, string) {
		out, err := exec.Command(curl, "-sS", "--cacert", c.CABundle, "-w", "\n%{http_code}", url).CombinedOutput()
		if err != nil {
			t.Fatalf("curl: %v\n%s", err, out)
		}
		s := strings.TrimSpace(string(out))
		i := strings.LastIndex(s, "\n")
		var code int
		fmt.Sscan(s[i+1:], &code)
		return code, s[:max(i, 0)]
	}
	url := presign(3)
	if !strings.Contains(url, "X-Amz-Signature=") {
		t.Fatalf("not a SigV4 presigned URL: %s", url)
	}
	if code, body := fetch(url); code != 200 || !strings.Contains(body, ":user/admin</Arn>") {
		t.Fatalf("fresh presigned URL: %d %s", code, body)
	}
	tampered := strings.Replace(url, "X-Amz-Expires=3", "X-Amz-Expires=4", 1)
	if tampered == url {
		t.Fatalf("no X-Amz-Expires=3 in %s", url)
	}
	if code, body := fetch(tampered); code != 403 || !strings.Contains(body, "SignatureDoesNotMatch") {
		t.Fatalf("tampered presigned URL: %d %s", code, body)
	}
	time.Sleep(4 * time.Second)
	if code, body := fetch(url); code != 403 {
		t.Fatalf("expired presigned URL: %d %s", code, body)
	}
}
