package kms

import (
	"context"
	"errors"
	"net/http"
	"slices"

	"convoy/internal/awsproto"
	"convoy/internal/iam"
	"convoy/internal/policy"
)

// authorizeKey decides whether p may perform action on k, as AWS KMS does
// within one account:
//
//   - an explicit Deny in the key policy or in p's IAM policies denies;
//   - a key policy statement that allows p itself (its ARN; its role's ARN
//     or "*" within its session policy) allows without IAM;
//   - a statement that allows p only through its account (the account root,
//     as the default key policy does) delegates to IAM, which must allow too
//     (iam.Store.ResourcePolicyGrants);
//   - anything else is denied.
func (s *Service) authorizeKey(ctx context.Context, p *iam.Principal, action string, k *key, cond map[string][]string) error {
	if p == nil {
		return awsproto.Errorf(http.StatusForbidden, "AccessDenied", "request is not authenticated")
	}
	doc, err := s.keyPolicy(k.Policy)
	if err != nil {
		return err
	}
	cond = withCaller(cond, p)
	c := s.iam.RequestContext(p)
	for name, v := range cond {
		c[name] = v
	}
	req := policy.Request{Action: action, Resource: k.ARN, Principal: p.ARN, PrincipalAccount: p.AccountID, Context: c}
	byKey := policy.Evaluate([]*policy.Document{doc}, req)
	if byKey == policy.ExplicitDeny {
		return denied(p, action, k.ARN, "with an explicit deny in a resource-based policy")
	}
	byIAM, why, err := s.iam.Decide(ctx, p, action, k.ARN, cond)
	if err != nil {
		return err
	}
	switch {
	case byIAM == policy.ExplicitDeny:
		return denied(p, action, k.ARN, "because "+why)
	case byKey != policy.Allow:
		return denied(p, action, k.ARN, "because no resource-based policy allows the "+action+" action")
	case byIAM == policy.Allow || s.iam.ResourcePolicyGrants(doc, req, p):
		return nil
	}
	return denied(p, action, k.ARN, "because "+why)
}

// authorizeAccount checks an action that has no key (CreateKey, ListKeys,
// …) or names another resource (an alias): IAM alone decides.
func (s *Service) authorizeAccount(ctx context.Context, p *iam.Principal, action, resource string, cond map[string][]string) error {
	if p == nil {
		return awsproto.Errorf(http.StatusForbidden, "AccessDenied", "request is not authenticated")
	}
	return s.iam.Authorize(ctx, p, action, resource, withCaller(cond, p))
}

func withCaller(cond map[string][]string, p *iam.Principal) map[string][]string {
	out := make(map[string][]string, len(cond)+1)
	for k, v := range cond {
		out[k] = v
	}
	out["kms:CallerAccount"] = []string{p.AccountID}
	return out
}

func denied(p *iam.Principal, action, resource, why string) error {
	return awsproto.Errorf(http.StatusForbidden, "AccessDenied",
		"User: %s is not authorized to perform: %s on resource: %s %s", p.ARN, action, resource, why)
}

// keyPolicy returns the parsed form of a stored key policy.
func (s *Service) keyPolicy(text string) (*policy.Document, error) {
	s.mu.Lock()
	doc, ok := s.policies[text]
	s.mu.Unlock()
	if ok {
		return doc, nil
	}
	doc, err := policy.Parse(text)
	if err != nil {
		// Stored policies were checked by parseKeyPolicy: this is damage.
		return nil, err
	}
	s.mu.Lock()
	if len(s.policies) >= 1000 {
		clear(s.policies)
	}
	s.policies[text] = doc
	s.mu.Unlock()
	return doc, nil
}

// maxKeyPolicy is AWS's key policy size quota.
const maxKeyPolicy = 32 << 10

// parseKeyPolicy validates a key policy given by a caller.
func parseKeyPolicy(text string) (*policy.Document, error) {
	if len(text) > maxKeyPolicy {
		return nil, kmsError("LimitExceededException", "The key policy is %d bytes; the limit is %d.", len(text), maxKeyPolicy)
	}
	doc, err := policy.Parse(text)
	if err != nil {
		return nil, kmsError("MalformedPolicyDocumentException", "%s", err.Error())
	}
	for i, st := range doc.Statements {
		if st.Principal == nil && st.NotPrincipal == nil {
			return nil, kmsError("MalformedPolicyDocumentException", "Statement %d has no Principal: every statement of a key policy names its principals.", i+1)
		}
	}
	return doc, nil
}

// lockoutCheck refuses a key policy under which the caller could no longer
// change the key policy, unless the caller bypasses the check, as AWS does.
func (s *Service) lockoutCheck(ctx context.Context, p *iam.Principal, k *key, text string, bypass bool) error {
	if bypass {
		return nil
	}
	probe := *k
	probe.Policy = text
	err := s.authorizeKey(ctx, p, "kms:PutKeyPolicy", &probe, nil)
	if isAccessDenied(err) {
		return kmsError("MalformedPolicyDocumentException",
			"The new key policy will not allow you to update the key policy in the future.")
	}
	return err
}

// cryptoConditions are the condition keys of a cryptographic operation.
func cryptoConditions(encCtx map[string]string, via, alias string) map[string][]string {
	c := map[string][]string{}
	if len(encCtx) > 0 {
		keys := make([]string, 0, len(encCtx))
		for k, v := range encCtx {
			keys = append(keys, k)
			c["kms:EncryptionContext:"+k] = []string{v}
		}
		slices.Sort(keys)
		c["kms:EncryptionContextKeys"] = keys
	}
	if via != "" {
		c["kms:ViaService"] = []string{via}
	}
	if alias != "" {
		c["kms:RequestAlias"] = []string{alias}
	}
	return c
}

// tagConditions are aws:RequestTag/… and aws:TagKeys of a request.
func tagConditions(c map[string][]string, tags []tag) map[string][]string {
	if len(tags) == 0 {
		return c
	}
	if c == nil {
		c = map[string][]string{}
	}
	keys := make([]string, 0, len(tags))
	for _, t := range tags {
		keys = append(keys, t.TagKey)
		c["aws:RequestTag/"+t.TagKey] = []string{t.TagValue}
	}
	c["aws:TagKeys"] = keys
	return c
}

// isAccessDenied reports whether err is an authorization refusal.
func isAccessDenied(err error) bool {
	var ae *awsproto.Error
	return errors.As(err, &ae) && ae.Code == "AccessDenied"
}
