package images

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// dockerHub is how a reference to Docker Hub is spelled in the store. go-containerregistry
// says index.docker.io; Docker, and so the people typing references, say docker.io.
const dockerHub = "docker.io"

// reference is an image reference in the canonical form the store keys on:
// registry/repository:tag, with Docker's defaults filled in.
type reference struct {
	registry string // "docker.io", "123456789012.dkr.ecr.us-east-1.amazonaws.com", …
	repo     string // "library/trainer"
	tag      string // "latest" unless given; "" for a bare digest
	digest   string // "sha256:…", or "" for a tag reference
}

// parseReference normalises s like Docker does: "trainer" is
// docker.io/library/trainer:latest, "me/trainer:1" is docker.io/me/trainer:1.
// A digest ("name@sha256:…", "name:tag@sha256:…", or a bare "sha256:…")
// pins content, and the tag is then ignored.
func parseReference(s string) (reference, error) {
	if strings.HasPrefix(s, "sha256:") {
		if _, err := v1.NewHash(s); err != nil {
			return reference{}, fmt.Errorf("image reference %q: %w", s, err)
		}
		return reference{digest: s}, nil
	}
	ref, err := name.ParseReference(s)
	if err != nil {
		return reference{}, fmt.Errorf("image reference %q: %w", s, err)
	}
	r := reference{
		registry: ref.Context().RegistryStr(),
		repo:     ref.Context().RepositoryStr(),
	}
	if r.registry == name.DefaultRegistry {
		r.registry = dockerHub
	}
	switch ref := ref.(type) {
	case name.Tag:
		r.tag = ref.TagStr()
	case name.Digest:
		r.digest = ref.DigestStr()
		if _, err := v1.NewHash(r.digest); err != nil {
			return reference{}, fmt.Errorf("image reference %q: only sha256 digests are supported: %w", s, err)
		}
	}
	return r, nil
}

// String is the canonical form: docker.io/library/trainer:1.
func (r reference) String() string {
	switch {
	case r.registry == "":
		return r.digest
	case r.digest != "":
		return r.registry + "/" + r.repo + "@" + r.digest
	default:
		return r.registry + "/" + r.repo + ":" + r.tag
	}
}

// Familiar is the short form people type and `docker images` shows:
// trainer:1 for docker.io/library/trainer:1, me/trainer:1 for docker.io/me/trainer:1.
func (r reference) Familiar() string {
	s := r.String()
	if r.registry != dockerHub {
		return s
	}
	s = strings.TrimPrefix(s, dockerHub+"/")
	return strings.TrimPrefix(s, "library/")
}

// ecrRegistry matches the registries of Amazon ECR, where SageMaker training
// images live: ACCOUNT.dkr.ecr[-fips].REGION.amazonaws.com[.cn].
var ecrRegistry = regexp.MustCompile(`^[0-9]{12}\.dkr\.ecr(-fips)?\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$`)

// shortName is, for an ECR reference, the reference the same repository:tag
// would have if it had been imported without the registry:
// 123456789012.dkr.ecr.us-east-1.amazonaws.com/team/trainer:1 → docker.io/team/trainer:1,
// …/trainer:1 → docker.io/library/trainer:1. Jobs written for SageMaker name
// ECR images; convoy has no ECR, so the image is imported under its short name.
func (r reference) shortName() (reference, bool) {
	if !ecrRegistry.MatchString(r.registry) {
		return reference{}, false
	}
	short, err := parseReference(r.repo + ":" + r.tag)
	if err != nil || r.tag == "" || short.registry != dockerHub {
		return reference{}, false
	}
	return short, true
}

// sameRepo reports whether a stored reference names the same repository as r,
// directly or through the ECR short-name rule.
func (r reference) sameRepo(stored reference) bool {
	if r.registry == stored.registry && r.repo == stored.repo {
		return true
	}
	if !ecrRegistry.MatchString(r.registry) {
		return false
	}
	short, err := parseReference(r.repo)
	return err == nil && short.registry == stored.registry && short.repo == stored.repo
}

// Normalize returns the familiar form of an image reference (trainer:1,
// 123456789012.dkr.ecr.us-east-1.amazonaws.com/trainer:1, trainer@sha256:…),
// or an error if ref is not a valid reference. Callers that accept a
// TrainingImage use it to reject a malformed one early.
func Normalize(ref string) (string, error) {
	r, err := parseReference(ref)
	if err != nil {
		return "", err
	}
	return r.Familiar(), nil
}
