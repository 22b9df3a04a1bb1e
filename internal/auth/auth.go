// Package auth authenticates API requests: it verifies their Signature
// Version 4 (sigv4) against the keys convoy issued, long-term (iam) or
// temporary (sts), and attaches the resulting principal to the request
// context, where every service handler finds it for iam.Authorize.
package auth

import (
	"context"
	"errors"
	"net"
	"net/http"

	"convoy/internal/awsproto"
	"convoy/internal/iam"
	"convoy/internal/sigv4"
	"convoy/internal/sts"
)

// Authenticator verifies requests.
type Authenticator struct {
	verifier *sigv4.Verifier
	iam      *iam.Store
	sts      *sts.Service
}

// New returns an authenticator for keys of store and sessions of tokens.
func New(store *iam.Store, tokens *sts.Service) *Authenticator {
	a := &Authenticator{iam: store, sts: tokens}
	a.verifier = &sigv4.Verifier{Lookup: a.lookup}
	return a
}

// resolved carries the principal found while looking up the key, so the
// lookup is done once per request.
type resolved struct {
	principal *iam.Principal
	user      string
}

type resolvedKey struct{}

func (a *Authenticator) lookup(ctx context.Context, accessKeyID, token string) (string, error) {
	res, _ := ctx.Value(resolvedKey{}).(*resolved)
	if res == nil {
		return "", errors.New("auth: lookup outside Authenticate")
	}
	if token != "" {
		secret, p, err := a.sts.Lookup(ctx, accessKeyID, token)
		switch {
		case errors.Is(err, sts.ErrExpiredToken):
			return "", &sigv4.Error{Kind: sigv4.ExpiredToken, Msg: "The security token included in the request is expired"}
		case err != nil:
			return "", &sigv4.Error{Kind: sigv4.InvalidToken, Msg: "The security token included in the request is invalid"}
		}
		res.principal = p
		return secret, nil
	}
	secret, user, err := a.iam.LookupAccessKey(ctx, accessKeyID)
	if errors.Is(err, iam.ErrUnknownKey) {
		return "", &sigv4.Error{Kind: sigv4.UnknownAccessKey, Msg: "The AWS Access Key Id you provided does not exist in our records."}
	}
	if err != nil {
		return "", err
	}
	res.user = user
	return secret, nil
}

// Authenticate verifies r and returns it with the caller's principal in its
// context, or the AWS error to answer with, shaped for service.
func (a *Authenticator) Authenticate(r *http.Request, service string) (*http.Request, *awsproto.Error) {
	res := &resolved{}
	r = r.WithContext(context.WithValue(r.Context(), resolvedKey{}, res))
	result, err := a.verifier.Verify(r)
	if err != nil {
		var se *sigv4.Error
		if errors.As(err, &se) {
			return nil, awsproto.Errorf(se.Status(service), se.Code(service), "%s", se.Msg)
		}
		return nil, awsproto.Errorf(http.StatusInternalServerError, "InternalFailure", "authentication failed: %v", err)
	}
	p := res.principal
	if p == nil {
		p, err = a.iam.UserPrincipal(r.Context(), res.user, result.AccessKeyID)
		if err != nil {
			return nil, awsproto.Errorf(http.StatusForbidden, (&sigv4.Error{Kind: sigv4.UnknownAccessKey}).Code(service),
				"The AWS Access Key Id you provided does not exist in our records.")
		}
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		p.SourceIP = host
	}
	return r.WithContext(iam.WithPrincipal(r.Context(), p)), nil
}

// Caller implements server.Authenticator: the principal's ARN, for the log.
func (a *Authenticator) Caller(r *http.Request) string {
	if p := iam.PrincipalFrom(r.Context()); p != nil {
		return p.ARN
	}
	return ""
}
