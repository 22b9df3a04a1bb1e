// Package sts issues temporary security credentials (GetSessionToken,
// AssumeRole) and answers GetCallerIdentity, over the STS query protocol.
//
// A session token is self-contained: the temporary key's secret, expiry and
// identity, sealed (AES-256-GCM, sealbox) under the installation's master
// key. Nothing is stored per session, any convoy sharing the master key can
// verify it, and a token changed by one bit does not open.
package sts

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"convoy/internal/awsproto"
	"convoy/internal/iam"
	"convoy/internal/policy"
	"convoy/internal/sealbox"
)

// Namespace is the XML namespace of STS responses.
const Namespace = "https://sts.amazonaws.com/doc/2011-06-15/"

const (
	tokenPrefix = "CVY1"
	tokenAAD    = "convoy/sts/session-token/v1"
	// MaxSessionPolicy is the largest session policy AWS accepts (packed).
	maxSessionPolicy = 2048
)

// Service is the STS implementation.
type Service struct {
	iam *iam.Store
	box *sealbox.Box
	log *slog.Logger
	// MinDuration is the shortest session that may be requested (AWS: 15
	// minutes). Tests lower it to watch credentials expire.
	MinDuration time.Duration
	now         func() time.Time

	// revoked holds temporary access key IDs revoked before their expiry
	// (RevokeCredentials), each until it would have expired anyway.
	revokedMu sync.RWMutex
	revoked   map[string]time.Time
}

// New returns the STS service.
func New(store *iam.Store, box *sealbox.Box, log *slog.Logger) *Service {
	return &Service{iam: store, box: box, log: log, MinDuration: 15 * time.Minute, now: time.Now, revoked: map[string]time.Time{}}
}

// claims is what a session token carries.
type claims struct {
	AccessKeyID   string `json:"k"`
	Secret        string `json:"s"`
	Expires       int64  `json:"e"`
	Issued        int64  `json:"i"`
	Kind          string `json:"t"` // iam.KindUser or iam.KindAssumedRole
	Name          string `json:"n"` // user name or role name
	UserID        string `json:"u"`
	RoleARN       string `json:"r,omitempty"`
	Session       string `json:"sn,omitempty"`
	SessionPolicy string `json:"p,omitempty"`
}

// ErrInvalidToken and ErrExpiredToken are returned by Lookup.
var (
	ErrInvalidToken = errors.New("the security token included in the request is invalid")
	ErrExpiredToken = errors.New("the security token included in the request is expired")
)

func (s *Service) seal(c claims) string {
	raw, _ := json.Marshal(c)
	return tokenPrefix + base64.RawURLEncoding.EncodeToString(s.box.Seal(raw, []byte(tokenAAD)))
}

func (s *Service) open(token string) (*claims, error) {
	rest, ok := strings.CutPrefix(token, tokenPrefix)
	if !ok || len(token) > 8192 {
		return nil, ErrInvalidToken
	}
	sealed, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return nil, ErrInvalidToken
	}
	raw, err := s.box.Open(sealed, []byte(tokenAAD))
	if err != nil {
		return nil, ErrInvalidToken
	}
	var c claims
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, ErrInvalidToken
	}
	return &c, nil
}

// Lookup resolves temporary credentials: it opens the session token, checks
// that it belongs to accessKeyID and has not expired, and returns the
// secret and the principal.
func (s *Service) Lookup(ctx context.Context, accessKeyID, token string) (string, *iam.Principal, error) {
	c, err := s.open(token)
	if err != nil {
		return "", nil, err
	}
	if c.AccessKeyID != accessKeyID {
		return "", nil, ErrInvalidToken
	}
	if s.now().Unix() >= c.Expires {
		return "", nil, ErrExpiredToken
	}
	if s.isRevoked(accessKeyID) {
		return "", nil, ErrInvalidToken
	}
	p := &iam.Principal{
		AccountID: s.iam.AccountID(), UserID: c.UserID, Kind: c.Kind, Name: c.Name, AccessKeyID: accessKeyID,
		Temporary: true, SessionPolicy: c.SessionPolicy, TokenIssued: time.Unix(c.Issued, 0), RoleARN: c.RoleARN,
		SessionName: c.Session,
	}
	// A session is bound to the unique ID of its role or user (AROA…,
	// AIDA…), as on AWS, not to the name: policies are looked up by name,
	// so a session of a deleted role or user must not come back to life
	// as whatever is created later under the same name.
	if c.Kind == iam.KindAssumedRole {
		r, err := s.iam.CachedRole(ctx, c.Name)
		if err != nil || r.ID+":"+c.Session != c.UserID {
			return "", nil, ErrInvalidToken // the role was deleted (and perhaps created again)
		}
		p.ARN = fmt.Sprintf("arn:aws:sts::%s:assumed-role/%s/%s", p.AccountID, c.Name, c.Session)
	} else {
		u, err := s.iam.CachedUser(ctx, c.Name)
		if err != nil || u.ID != c.UserID {
			return "", nil, ErrInvalidToken // the user was deleted (and perhaps created again)
		}
		p.ARN = u.ARN
	}
	return c.Secret, p, nil
}

// ServeHTTP serves the STS query API.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		awsproto.WriteError(w, r, awsproto.Query, awsproto.Errorf(http.StatusBadRequest, "MalformedQueryString", "%v", err))
		return
	}
	p := iam.PrincipalFrom(r.Context())
	action := r.Form.Get("Action")
	var result any
	var err error
	switch action {
	case "GetCallerIdentity":
		// Allowed to every authenticated caller, as on AWS.
		awsproto.WriteQueryStrings(w, r, Namespace, action, "UserId", p.UserID, "Account", p.AccountID, "Arn", p.ARN)
		return
	case "GetSessionToken":
		result, err = s.getSessionToken(r, p)
	case "AssumeRole":
		result, err = s.assumeRole(r, p)
	default:
		err = awsproto.Errorf(http.StatusBadRequest, "InvalidAction", "Could not find operation %q for version 2011-06-15", action)
	}
	if err != nil {
		var ae *awsproto.Error
		if !errors.As(err, &ae) {
			s.log.Error("sts action failed", "action", action, "err", err)
			ae = awsproto.Errorf(http.StatusInternalServerError, "InternalFailure", "internal error; request ID %s", awsproto.RequestID(r.Context()))
		}
		awsproto.WriteError(w, r, awsproto.Query, ae)
		return
	}
	awsproto.WriteQueryResult(w, r, Namespace, action, result)
}

type credentialsXML struct {
	AccessKeyId     string
	SecretAccessKey string
	SessionToken    string
	Expiration      string
}

func (s *Service) duration(r *http.Request, def, max time.Duration) (time.Duration, error) {
	v := r.Form.Get("DurationSeconds")
	if v == "" {
		return min(def, max), nil
	}
	n, err := strconv.Atoi(v)
	d := time.Duration(n) * time.Second
	if err != nil || d < s.MinDuration || d > max {
		return 0, awsproto.Errorf(http.StatusBadRequest, "ValidationError",
			"The requested DurationSeconds %s must be between %d and %d seconds", v, int(s.MinDuration.Seconds()), int(max.Seconds()))
	}
	return d, nil
}

func (s *Service) issue(c claims, d time.Duration) (credentialsXML, claims) {
	now := s.now()
	c.AccessKeyID, c.Secret = iam.NewTemporaryKeyID(), iam.NewSecret()
	c.Issued, c.Expires = now.Unix(), now.Add(d).Unix()
	return credentialsXML{c.AccessKeyID, c.Secret, s.seal(c), awsproto.Timestamp(time.Unix(c.Expires, 0))}, c
}

func (s *Service) getSessionToken(r *http.Request, p *iam.Principal) (any, error) {
	if p.Temporary {
		return nil, awsproto.Errorf(http.StatusForbidden, "AccessDenied", "Cannot call GetSessionToken with session credentials")
	}
	d, err := s.duration(r, 12*time.Hour, 36*time.Hour)
	if err != nil {
		return nil, err
	}
	creds, _ := s.issue(claims{Kind: iam.KindUser, Name: p.Name, UserID: p.UserID}, d)
	return struct{ Credentials credentialsXML }{creds}, nil
}

var sessionNameRE = regexp.MustCompile(`^[\w+=,.@-]{2,64}$`)

func (s *Service) assumeRole(r *http.Request, p *iam.Principal) (any, error) {
	ctx := r.Context()
	roleARN, session := r.Form.Get("RoleArn"), r.Form.Get("RoleSessionName")
	if !sessionNameRE.MatchString(session) {
		return nil, awsproto.Errorf(http.StatusBadRequest, "ValidationError",
			"RoleSessionName %q must be 2 to 64 characters of [\\w+=,.@-]", session)
	}
	sessionPolicy := r.Form.Get("Policy")
	if sessionPolicy != "" {
		if len(sessionPolicy) > maxSessionPolicy {
			return nil, awsproto.Errorf(http.StatusBadRequest, "PackedPolicyTooLarge", "the session policy is larger than %d characters", maxSessionPolicy)
		}
		if _, err := policy.Parse(sessionPolicy); err != nil {
			return nil, awsproto.Errorf(http.StatusBadRequest, "MalformedPolicyDocument", "%s", err.Error())
		}
	}
	notAuthorized := awsproto.Errorf(http.StatusForbidden, "AccessDenied",
		"User: %s is not authorized to perform: sts:AssumeRole on resource: %s", p.ARN, roleARN)
	role, err := s.iam.RoleByARN(ctx, roleARN)
	if err != nil {
		return nil, notAuthorized // as AWS: do not reveal whether the role exists
	}
	trust, err := policy.ParseTrust(role.Trust)
	if err != nil {
		return nil, notAuthorized
	}
	req := policy.Request{Action: "sts:AssumeRole", Resource: role.ARN, Principal: p.ARN,
		PrincipalAccount: p.AccountID, Context: s.iam.RequestContext(p)}
	if policy.Evaluate([]*policy.Document{trust}, req) != policy.Allow {
		return nil, notAuthorized
	}
	// Within one account, a trust policy that names the caller is enough;
	// one that trusts the whole account needs the caller's own permission.
	identity, _, err := s.iam.Decide(ctx, p, "sts:AssumeRole", role.ARN, nil)
	if err != nil {
		return nil, err
	}
	if identity == policy.ExplicitDeny || (identity != policy.Allow && !namesPrincipal(trust, req, p)) {
		return nil, notAuthorized
	}
	max := time.Duration(role.MaxSession) * time.Second
	if p.Kind == iam.KindAssumedRole {
		max = time.Hour // role chaining is limited to one hour
	}
	d, err := s.duration(r, time.Hour, max)
	if err != nil {
		return nil, err
	}
	creds, c := s.issue(claims{Kind: iam.KindAssumedRole, Name: role.Name, UserID: role.ID + ":" + session,
		RoleARN: role.ARN, Session: session, SessionPolicy: sessionPolicy}, d)
	s.log.Info("role assumed", "role", role.ARN, "session", session, "by", p.ARN, "access_key_id", c.AccessKeyID, "expires", creds.Expiration)
	type assumedXML struct{ AssumedRoleId, Arn string }
	return struct {
		Credentials      credentialsXML
		AssumedRoleUser  assumedXML
		PackedPolicySize *int `xml:",omitempty"`
	}{creds, assumedXML{c.UserID, fmt.Sprintf("arn:aws:sts::%s:assumed-role/%s/%s", p.AccountID, role.Name, session)}, nil}, nil
}

// namesPrincipal reports whether an Allow statement of the trust policy
// names the caller's own ARN (not just its account).
func namesPrincipal(trust *policy.Document, req policy.Request, p *iam.Principal) bool {
	for _, st := range trust.Statements {
		if st.Effect != "Allow" || st.Principal == nil || !st.Matches(req) {
			continue
		}
		for _, a := range st.Principal.AWS {
			if a == p.PolicyARN() || a == p.ARN {
				return true
			}
		}
	}
	return false
}

// RevokeCredentials ends temporary credentials minted by RoleCredentials
// before their expiry exp: the service that holds them (the container
// credentials endpoint) revokes what it handed to a job when the job ends,
// so credentials a container copied out die with the job rather than up
// to an hour later. The list lives in memory: after a restart of convoy,
// credentials revoked before it are valid again until their expiry (at
// most credsvc's one-hour lifetime), while the jobs they belonged to are
// gone.
func (s *Service) RevokeCredentials(accessKeyID string, exp time.Time) {
	now := s.now()
	if !exp.After(now) {
		return
	}
	s.revokedMu.Lock()
	defer s.revokedMu.Unlock()
	for k, until := range s.revoked { // those expired by now
		if !until.After(now) {
			delete(s.revoked, k)
		}
	}
	s.revoked[accessKeyID] = exp
	s.log.Info("temporary credentials revoked", "access_key_id", accessKeyID, "expires", exp)
}

func (s *Service) isRevoked(accessKeyID string) bool {
	s.revokedMu.RLock()
	defer s.revokedMu.RUnlock()
	_, ok := s.revoked[accessKeyID]
	return ok
}

// RoleCredentials mints temporary credentials for role on behalf of an AWS
// service that the role trusts (SageMaker running a training job), as
// AssumeRole would return to it. The caller has already checked that it may
// pass the role (iam:PassRole) and that the role trusts the service; d is
// not bounded by the role's MaxSessionDuration because the service, not a
// user, holds the session for the life of its job.
func (s *Service) RoleCredentials(role iam.Role, session string, d time.Duration) (akid, secret, token string, exp time.Time) {
	creds, c := s.issue(claims{Kind: iam.KindAssumedRole, Name: role.Name, UserID: role.ID + ":" + session,
		RoleARN: role.ARN, Session: session}, d)
	s.log.Info("role credentials issued to a service", "role", role.ARN, "session", session, "access_key_id", c.AccessKeyID,
		"expires", creds.Expiration)
	return creds.AccessKeyId, creds.SecretAccessKey, creds.SessionToken, time.Unix(c.Expires, 0)
}
