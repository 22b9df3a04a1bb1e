package iam

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"convoy/internal/awsproto"
	"convoy/internal/policy"
)

// Principal is the authenticated caller of a request.
type Principal struct {
	// ARN is the user's ARN, or the session ARN of an assumed role
	// (arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION).
	ARN       string
	AccountID string
	// UserID is the user's ID, or ROLEID:SESSION for an assumed role.
	UserID string
	// Kind is KindUser or KindAssumedRole.
	Kind string
	// Name is the user name, or the role name for an assumed role.
	Name        string
	SessionName string
	// RoleARN is the role's own ARN for an assumed role.
	RoleARN     string
	AccessKeyID string
	// Temporary is true for STS credentials.
	Temporary     bool
	SessionPolicy string
	TokenIssued   time.Time
	SourceIP      string
}

// KindAssumedRole is the kind of a principal using a role's session.
const KindAssumedRole = "assumed-role"

type principalKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the caller of ctx, or nil.
func PrincipalFrom(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey{}).(*Principal)
	return p
}

// PolicyARN returns the ARN that trust and resource policies match for p:
// the role ARN for an assumed role, the user ARN otherwise.
func (p *Principal) PolicyARN() string {
	if p.Kind == KindAssumedRole {
		return p.RoleARN
	}
	return p.ARN
}

type keyEntry struct {
	gen          int64
	secret, user string
}

type docsEntry struct {
	gen  int64
	docs []*policy.Document
}

// genEntry is a cached value and the IAM generation it was read at.
type genEntry[T any] struct {
	gen int64
	v   T
}

type caches struct {
	mu    sync.Mutex
	keys  map[string]keyEntry
	docs  map[string]docsEntry
	users map[string]genEntry[User]
	roles map[string]genEntry[Role]
}

// LookupAccessKey returns the secret and user of an active long-term key.
func (s *Store) LookupAccessKey(ctx context.Context, id string) (secret, user string, err error) {
	gen := s.gen.Load()
	s.cache.mu.Lock()
	e, ok := s.cache.keys[id]
	s.cache.mu.Unlock()
	if ok && e.gen == gen {
		return e.secret, e.user, nil
	}
	var sealed []byte
	var status string
	err = s.db.QueryRowContext(ctx, `SELECT user_name, secret_sealed, status FROM iam_access_keys WHERE access_key_id = ?`, id).
		Scan(&user, &sealed, &status)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && status != "Active") {
		return "", "", ErrUnknownKey
	}
	if err != nil {
		return "", "", err
	}
	plain, err := s.box.Open(sealed, []byte(id))
	if err != nil {
		return "", "", fmt.Errorf("access key %s: %w", id, err)
	}
	s.cache.mu.Lock()
	if len(s.cache.keys) > 10000 {
		clear(s.cache.keys)
	}
	s.cache.keys[id] = keyEntry{gen: gen, secret: string(plain), user: user}
	s.cache.mu.Unlock()
	return string(plain), user, nil
}

// ErrUnknownKey means an access key does not exist or is inactive.
var ErrUnknownKey = errors.New("unknown or inactive access key")

// UserPrincipal builds the principal of a user signing with a long-term key.
func (s *Store) UserPrincipal(ctx context.Context, user, accessKeyID string) (*Principal, error) {
	u, err := s.CachedUser(ctx, user)
	if err != nil {
		return nil, err
	}
	return &Principal{ARN: u.ARN, AccountID: s.accountID, UserID: u.ID, Kind: KindUser, Name: u.Name, AccessKeyID: accessKeyID}, nil
}

// CachedUser is GetUser through a cache that any IAM write drops, like
// keys and policies: a user is looked up on every request it signs, and
// on every request of its STS sessions.
func (s *Store) CachedUser(ctx context.Context, name string) (User, error) {
	return cached(s, s.cache.users, name, func() (User, error) { return s.GetUser(ctx, name) })
}

// CachedRole is GetRole through the same cache: a role is looked up on
// every request of its sessions (sts.Service.Lookup).
func (s *Store) CachedRole(ctx context.Context, name string) (Role, error) {
	return cached(s, s.cache.roles, name, func() (Role, error) { return s.GetRole(ctx, name) })
}

// cached returns m's entry for name if no IAM write happened since it was
// stored, else load's answer, which it stores. A full map is emptied.
func cached[T any](s *Store, m map[string]genEntry[T], name string, load func() (T, error)) (T, error) {
	gen := s.gen.Load()
	s.cache.mu.Lock()
	e, ok := m[name]
	s.cache.mu.Unlock()
	if ok && e.gen == gen {
		return e.v, nil
	}
	v, err := load()
	if err != nil {
		return v, err
	}
	s.cache.mu.Lock()
	if len(m) > 10000 {
		clear(m)
	}
	m[name] = genEntry[T]{gen: gen, v: v}
	s.cache.mu.Unlock()
	return v, nil
}

func (s *Store) documents(ctx context.Context, kind, owner string) ([]*policy.Document, error) {
	gen := s.gen.Load()
	key := kind + "/" + owner
	s.cache.mu.Lock()
	e, ok := s.cache.docs[key]
	s.cache.mu.Unlock()
	if ok && e.gen == gen {
		return e.docs, nil
	}
	if err := s.ownerExists(ctx, kind, owner); err != nil {
		return nil, err
	}
	raw, err := s.policyDocuments(ctx, kind, owner)
	if err != nil {
		return nil, err
	}
	docs := make([]*policy.Document, 0, len(raw))
	for _, r := range raw {
		d, err := policy.Parse(r)
		if err != nil {
			return nil, fmt.Errorf("stored policy of %s %s does not parse: %w", kind, owner, err)
		}
		docs = append(docs, d)
	}
	s.cache.mu.Lock()
	if len(s.cache.docs) > 10000 {
		clear(s.cache.docs)
	}
	s.cache.docs[key] = docsEntry{gen: gen, docs: docs}
	s.cache.mu.Unlock()
	return docs, nil
}

// RequestContext returns the global condition keys of a request by p.
func (s *Store) RequestContext(p *Principal) map[string][]string {
	now := time.Now().UTC()
	c := map[string][]string{
		"aws:SecureTransport":        {"true"}, // convoy has no plaintext listener
		"aws:CurrentTime":            {now.Format(time.RFC3339)},
		"aws:EpochTime":              {strconv.FormatInt(now.Unix(), 10)},
		"aws:PrincipalArn":           {p.PolicyARN()},
		"aws:PrincipalAccount":       {p.AccountID},
		"aws:userid":                 {p.UserID},
		"aws:MultiFactorAuthPresent": {"false"},
		"aws:ViaAWSService":          {"false"},
		"aws:PrincipalIsAWSService":  {"false"},
	}
	if p.Kind == KindAssumedRole {
		c["aws:PrincipalType"] = []string{"AssumedRole"}
	} else {
		c["aws:PrincipalType"] = []string{"User"}
		c["aws:username"] = []string{p.Name}
	}
	if p.Temporary {
		c["aws:TokenIssueTime"] = []string{p.TokenIssued.UTC().Format(time.RFC3339)}
	}
	if p.SourceIP != "" {
		c["aws:SourceIp"] = []string{p.SourceIP}
	}
	return c
}

// Authorize decides whether p may perform action on resource. cond adds
// request-specific condition keys (s3:prefix, sagemaker:VolumeKmsKey, …) to
// the global ones. Every service handler calls it before acting: explicit
// deny wins, then an allow is needed from the identity policies and, for a
// session with a session policy, from that policy too; otherwise deny.
func (s *Store) Authorize(ctx context.Context, p *Principal, action, resource string, cond map[string][]string) error {
	if p == nil {
		return awsproto.Errorf(http.StatusForbidden, "AccessDenied", "request is not authenticated")
	}
	decision, why, err := s.Decide(ctx, p, action, resource, cond)
	if err != nil {
		return err
	}
	if decision != policy.Allow {
		return denied(p, action, resource, why)
	}
	return nil
}

// Decide is Authorize's decision with its reason, for callers that combine
// it with another policy (AssumeRole with a trust policy).
func (s *Store) Decide(ctx context.Context, p *Principal, action, resource string, cond map[string][]string) (policy.Decision, string, error) {
	kind, owner := KindUser, p.Name
	if p.Kind == KindAssumedRole {
		kind = KindRole
	}
	docs, err := s.documents(ctx, kind, owner)
	if err != nil {
		var ae *awsproto.Error
		if errors.As(err, &ae) && ae.Code == "NoSuchEntity" {
			return policy.ImplicitDeny, "its " + kind + " no longer exists", nil
		}
		return policy.ImplicitDeny, "", err
	}
	c := s.RequestContext(p)
	for k, v := range cond {
		c[k] = v
	}
	req := policy.Request{Action: action, Resource: resource, Principal: p.ARN, PrincipalAccount: p.AccountID, Context: c}
	decision := policy.Evaluate(docs, req)
	switch decision {
	case policy.ExplicitDeny:
		return decision, "of an explicit deny in an identity-based policy", nil
	case policy.ImplicitDeny:
		return decision, "no identity-based policy allows the " + action + " action", nil
	}
	if p.SessionPolicy != "" {
		sp, err := policy.Parse(p.SessionPolicy)
		if err != nil {
			return policy.ImplicitDeny, "its session policy does not parse", nil
		}
		switch policy.Evaluate([]*policy.Document{sp}, req) {
		case policy.ExplicitDeny:
			return policy.ExplicitDeny, "of an explicit deny in a session policy", nil
		case policy.ImplicitDeny:
			return policy.ImplicitDeny, "no session policy allows the " + action + " action", nil
		}
	}
	return policy.Allow, "", nil
}

func denied(p *Principal, action, resource, why string) error {
	return awsproto.Errorf(http.StatusForbidden, "AccessDenied",
		"User: %s is not authorized to perform: %s on resource: %s because %s", p.ARN, action, resource, why)
}

// ResourceARN returns the ARN of an IAM resource in this account
// (kind "user", "role", "policy").
func (s *Store) ResourceARN(kind, name string) string { return s.arn(kind, "/", name) }

// AuthorizePassRole checks that p may hand the role roleARN to service (for
// example "sagemaker.amazonaws.com" when creating a training job): the role
// must exist in this account, p needs iam:PassRole on it, with the
// iam:PassedToService condition key set, and the role's trust policy must
// let service assume it. These are AWS's two gates: PassRole, then the
// service's own sts:AssumeRole. convoy mints the role's credentials itself
// (sts.RoleCredentials), so the second gate is checked here; without it a
// caller allowed to pass roles broadly could run a job as a role that
// trusts only an administrator.
//
// The trust policy is evaluated with aws:SourceAccount set to this account;
// a condition on aws:SourceArn (the job's ARN) does not match, so such a
// role is refused rather than trusted too widely.
func (s *Store) AuthorizePassRole(ctx context.Context, p *Principal, roleARN, service string) (Role, error) {
	role, err := s.RoleByARN(ctx, roleARN)
	if err != nil {
		// Do not tell a caller who may not pass the role whether it exists.
		if aerr := s.Authorize(ctx, p, "iam:PassRole", roleARN, map[string][]string{"iam:PassedToService": {service}}); aerr != nil {
			return Role{}, aerr
		}
		return Role{}, err
	}
	if err := s.Authorize(ctx, p, "iam:PassRole", role.ARN, map[string][]string{"iam:PassedToService": {service}}); err != nil {
		return Role{}, err
	}
	if !s.trusts(role, service) {
		return Role{}, awsproto.Errorf(http.StatusBadRequest, "ValidationException",
			"Could not assume role %s. Please ensure that the role exists and allows principal '%s' to assume the role (its trust policy needs an Allow of sts:AssumeRole for {\"Service\": \"%s\"}).",
			role.ARN, service, service)
	}
	return role, nil
}

// trusts reports whether role's trust policy lets the AWS service principal
// service (e.g. "sagemaker.amazonaws.com") assume it.
func (s *Store) trusts(role Role, service string) bool {
	trust, err := policy.ParseTrust(role.Trust)
	if err != nil {
		return false
	}
	req := policy.Request{Action: "sts:AssumeRole", Resource: role.ARN, Principal: service,
		Context: map[string][]string{"aws:SourceAccount": {s.accountID}}}
	return policy.Evaluate([]*policy.Document{trust}, req) == policy.Allow
}

// ResourcePolicyGrants reports whether a resource-based policy (a bucket
// policy, a key policy) that allows req is enough by itself to let p act,
// without an allow from p's identity policies, as AWS decides within one
// account:
//
//   - a statement naming p's own ARN (the user, or the assumed-role
//     session) grants;
//   - one naming p's role, or everyone ("*", NotPrincipal), grants only as
//     far as p's session policy, if the session has one, allows too: the
//     session policy bounds what the role's sessions get from policies
//     that name the role;
//   - one naming only p's account (its root ARN or bare ID) hands the
//     decision to p's identity policies and grants nothing by itself.
//
// Callers check explicit denies first and treat an identity Allow (from
// Decide, which applies the session policy) as enough on its own.
func (s *Store) ResourcePolicyGrants(doc *policy.Document, req policy.Request, p *Principal) bool {
	entity := false
	for i := range doc.Statements {
		st := &doc.Statements[i]
		if st.Effect != "Allow" || !st.Matches(req) {
			continue
		}
		if st.Principal == nil || st.Principal.Any {
			entity = true // NotPrincipal, or "*"
			continue
		}
		for _, a := range st.Principal.AWS {
			switch {
			case a == p.ARN:
				return true
			case a == "*" || (p.Kind == KindAssumedRole && a == p.RoleARN):
				entity = true
			}
		}
	}
	return entity && sessionAllows(p, req)
}

// sessionAllows reports whether p's session policy allows req; true for a
// session without one.
func sessionAllows(p *Principal, req policy.Request) bool {
	if p.SessionPolicy == "" {
		return true
	}
	sp, err := policy.Parse(p.SessionPolicy)
	return err == nil && policy.Evaluate([]*policy.Document{sp}, req) == policy.Allow
}
