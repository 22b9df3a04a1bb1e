package sagemaker

import (
	"context"
	"strings"
	"testing"

	"convoy/internal/iam"
)

func encrypted(hosts int, on bool) func(map[string]any) {
	return func(j map[string]any) {
		j["EnableInterContainerTrafficEncryption"] = on
		j["ResourceConfig"].(map[string]any)["InstanceCount"] = hosts
	}
}

func encryptedProcessing(hosts int, on bool) func(map[string]any) {
	return func(j map[string]any) {
		j["NetworkConfig"] = map[string]any{"EnableInterContainerTrafficEncryption": on}
		j["ProcessingResources"].(map[string]any)["ClusterConfig"].(map[string]any)["InstanceCount"] = hosts
	}
}

// Jobs of several instances run with or without inter-container traffic
// encryption, and DescribeTrainingJob says which.
func TestInterContainerEncryptionAccepted(t *testing.T) {
	e := newEnv(t)
	for _, on := range []bool{true, false} {
		name := map[bool]string{true: "enc", false: "plain"}[on]
		if status, out := e.call("CreateTrainingJob", e.job(name, encrypted(2, on)), e.admin); status != 200 {
			t.Fatalf("create %s: %d %v", name, status, out)
		}
		_, d := e.call("DescribeTrainingJob", map[string]any{"TrainingJobName": name}, e.admin)
		if v, ok := d["EnableInterContainerTrafficEncryption"].(bool); !ok || v != on {
			t.Fatalf("%s: EnableInterContainerTrafficEncryption %v, want %v", name, d["EnableInterContainerTrafficEncryption"], on)
		}
	}
	if status, out := e.call("CreateProcessingJob", e.processingJob("penc", encryptedProcessing(2, true)), e.admin); status != 200 {
		t.Fatalf("create processing: %d %v", status, out)
	}
	_, d := e.call("DescribeProcessingJob", map[string]any{"ProcessingJobName": "penc"}, e.admin)
	if nc, _ := d["NetworkConfig"].(map[string]any); nc["EnableInterContainerTrafficEncryption"] != true {
		t.Fatalf("DescribeProcessingJob NetworkConfig: %v", d["NetworkConfig"])
	}
}

// convoy up --require-internode-encryption refuses jobs of several
// instances that do not ask for encryption, saying why.
func TestRequireInterContainerEncryption(t *testing.T) {
	e := newEnv(t)
	e.svc.RequireInterContainerEncryption()
	for _, tc := range []struct {
		hosts int
		on    bool
		ok    bool
	}{{2, false, false}, {2, true, true}, {1, false, true}, {16, false, false}} {
		name := "j" + strings.Repeat("x", tc.hosts) + map[bool]string{true: "e", false: "p"}[tc.on]
		status, out := e.call("CreateTrainingJob", e.job(name, encrypted(tc.hosts, tc.on)), e.admin)
		if tc.ok != (status == 200) {
			t.Fatalf("%d hosts, encryption %v: %d %v", tc.hosts, tc.on, status, out)
		}
		if !tc.ok && (out["__type"] != "ValidationException" || !strings.Contains(out["message"].(string), "--require-internode-encryption") ||
			!strings.Contains(out["message"].(string), "set EnableInterContainerTrafficEncryption to true")) {
			t.Fatalf("refusal does not explain the setting: %v", out)
		}
		pstatus, pout := e.call("CreateProcessingJob", e.processingJob("p"+name, encryptedProcessing(tc.hosts, tc.on)), e.admin)
		if tc.ok != (pstatus == 200) {
			t.Fatalf("processing, %d hosts, encryption %v: %d %v", tc.hosts, tc.on, pstatus, pout)
		}
		if !tc.ok && !strings.Contains(pout["message"].(string), "NetworkConfig.EnableInterContainerTrafficEncryption") {
			t.Fatalf("processing refusal: %v", pout)
		}
	}
}

// An IAM policy can require encryption through the condition key
// sagemaker:InterContainerTrafficEncryption.
func TestIAMRequiresInterContainerEncryption(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.ids.CreateUser(ctx, "dev", "")
	k, _, _ := e.ids.CreateAccessKey(ctx, "dev")
	dev, _ := e.ids.UserPrincipal(ctx, "dev", k.ID)
	e.ids.PutInlinePolicy(ctx, iam.KindUser, "dev", "sm", `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["sagemaker:*","iam:PassRole"],"Resource":"*"},
		{"Effect":"Deny","Action":["sagemaker:CreateTrainingJob","sagemaker:CreateProcessingJob"],"Resource":"*",
		 "Condition":{"Bool":{"sagemaker:InterContainerTrafficEncryption":"false"}}}]}`)
	if status, out := e.call("CreateTrainingJob", e.job("plain", encrypted(2, false)), dev); status != 403 || out["__type"] != "AccessDeniedException" {
		t.Fatalf("unencrypted job under the deny: %d %v", status, out)
	}
	if status, out := e.call("CreateTrainingJob", e.job("enc", encrypted(2, true)), dev); status != 200 {
		t.Fatalf("encrypted job under the deny: %d %v", status, out)
	}
	if status, out := e.call("CreateProcessingJob", e.processingJob("pplain", encryptedProcessing(2, false)), dev); status != 403 {
		t.Fatalf("unencrypted processing job under the deny: %d %v", status, out)
	}
	if status, out := e.call("CreateProcessingJob", e.processingJob("penc", encryptedProcessing(2, true)), dev); status != 200 {
		t.Fatalf("encrypted processing job under the deny: %d %v", status, out)
	}
}
