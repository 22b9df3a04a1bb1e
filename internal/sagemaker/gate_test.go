package sagemaker

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"convoy/internal/images"
	"convoy/internal/images/imagetest"
)

// denyGate refuses every image, and records what it was shown.
type denyGate struct {
	saw  []string
	deny bool
}

func (g *denyGate) CheckImage(_ context.Context, img images.Image, rootfs string) error {
	b, _ := os.ReadFile(filepath.Join(rootfs, "marker"))
	g.saw = append(g.saw, img.Ref+" "+string(b))
	if g.deny {
		return errors.New("image " + img.Ref + " has known vulnerabilities (1 of severity CRITICAL or higher): GO-TEST")
	}
	return nil
}

// gateStore is an image store holding app:1, an image of one file, marker.
func gateStore(t *testing.T) *images.Store {
	t.Helper()
	dir := imagetest.Layout(t, []imagetest.File{{Name: "marker", Mode: 0o644, Content: []byte("hi")}},
		v1.Config{Entrypoint: []string{"/app"}})
	store, err := images.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Import(context.Background(), dir, "app:1", io.Discard); err != nil {
		t.Fatal(err)
	}
	return store
}

// The gate is asked, with the unpacked image, before a training or
// processing job runs it and before CreateModel records a model; its
// refusal fails the job with a ClientError and refuses the model.
func TestImageGate(t *testing.T) {
	store := gateStore(t)
	gate := &denyGate{deny: true}
	r := &LocalRunner{Images: store, Gate: gate, Dir: t.TempDir(), Log: slog.New(slog.DiscardHandler)}
	ctx := context.Background()

	job := &Job{Name: "j", Request: CreateTrainingJobRequest{
		AlgorithmSpecification: &AlgorithmSpecification{TrainingImage: "app:1"},
		ResourceConfig:         &ResourceConfig{InstanceCount: 1},
		StoppingCondition:      &StoppingCondition{MaxRuntimeInSeconds: 60},
	}}
	out := r.Run(ctx, job, func(string, string) {})
	if out.Status != Failed || !strings.HasPrefix(out.FailureReason, "ClientError: image app:1 has known vulnerabilities") {
		t.Errorf("training outcome %+v", out)
	}

	pj := &ProcessingJob{Name: "p", Request: CreateProcessingJobRequest{
		AppSpecification:    &AppSpecification{ImageUri: "app:1"},
		ProcessingResources: &ProcessingResources{ClusterConfig: &ProcessingClusterConfig{InstanceCount: 1}},
	}}
	pout := r.RunProcessing(ctx, pj, func() {})
	if pout.Status != Failed || !strings.HasPrefix(pout.FailureReason, "ClientError: image app:1 has known vulnerabilities") {
		t.Errorf("processing outcome %+v", pout)
	}

	host := &LocalModelHost{Runner: r}
	if err := host.CheckImage(ctx, "app:1"); err == nil || !strings.Contains(err.Error(), "GO-TEST") {
		t.Errorf("CheckImage: %v", err)
	}
	gate.deny = false
	if err := host.CheckImage(ctx, "app:1"); err != nil {
		t.Errorf("CheckImage with the gate open: %v", err)
	}
	if err := host.CheckImage(ctx, "other:1"); err == nil {
		t.Error("CheckImage passed an image not in the store")
	}
	if len(gate.saw) != 4 || gate.saw[0] != "app:1 hi" {
		t.Errorf("gate saw %q, want app:1 with its root filesystem four times", gate.saw)
	}

	// A long list of findings is cut to SageMaker's 1,024 characters.
	if got := clip("ClientError: " + strings.Repeat("é", 2000)); len(got) > maxFailure || !strings.HasSuffix(got, "...") {
		t.Errorf("clip: %d bytes", len(got))
	}
}
