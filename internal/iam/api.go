package iam

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"convoy/internal/awsproto"
)

// Namespace is the XML namespace of IAM responses.
const Namespace = "https://iam.amazonaws.com/doc/2010-05-08/"

// API serves the IAM query protocol.
type API struct {
	store *Store
	log   *slog.Logger
}

// NewAPI returns the IAM API handler. Requests reaching it are authenticated
// (the principal is in the context).
func NewAPI(store *Store, log *slog.Logger) *API { return &API{store: store, log: log} }

type apiCall struct {
	ctx    context.Context
	p      *Principal
	form   func(string) string
	action string
}

type handlerFunc func(*API, *apiCall) (any, error)

var iamActions = map[string]handlerFunc{
	"CreateUser":                     (*API).createUser,
	"GetUser":                        (*API).getUser,
	"ListUsers":                      (*API).listUsers,
	"DeleteUser":                     (*API).deleteUser,
	"CreateAccessKey":                (*API).createAccessKey,
	"ListAccessKeys":                 (*API).listAccessKeys,
	"UpdateAccessKey":                (*API).updateAccessKey,
	"DeleteAccessKey":                (*API).deleteAccessKey,
	"CreateRole":                     (*API).createRole,
	"GetRole":                        (*API).getRole,
	"ListRoles":                      (*API).listRoles,
	"DeleteRole":                     (*API).deleteRole,
	"UpdateAssumeRolePolicy":         (*API).updateAssumeRolePolicy,
	"PutUserPolicy":                  inline(KindUser, "put"),
	"GetUserPolicy":                  inline(KindUser, "get"),
	"DeleteUserPolicy":               inline(KindUser, "delete"),
	"ListUserPolicies":               inline(KindUser, "list"),
	"PutRolePolicy":                  inline(KindRole, "put"),
	"GetRolePolicy":                  inline(KindRole, "get"),
	"DeleteRolePolicy":               inline(KindRole, "delete"),
	"ListRolePolicies":               inline(KindRole, "list"),
	"CreatePolicy":                   (*API).createPolicy,
	"GetPolicy":                      (*API).getPolicy,
	"GetPolicyVersion":               (*API).getPolicyVersion,
	"ListPolicies":                   (*API).listPolicies,
	"DeletePolicy":                   (*API).deletePolicy,
	"AttachUserPolicy":               attachment(KindUser, "attach"),
	"DetachUserPolicy":               attachment(KindUser, "detach"),
	"ListAttachedUserPolicies":       attachment(KindUser, "list"),
	"AttachRolePolicy":               attachment(KindRole, "attach"),
	"DetachRolePolicy":               attachment(KindRole, "detach"),
	"ListAttachedRolePolicies":       attachment(KindRole, "list"),
	"GetAccountAuthorizationDetails": (*API).getAccountAuthorizationDetails,
}

// ServeHTTP implements http.Handler.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		awsproto.WriteError(w, r, awsproto.Query, awsproto.Errorf(http.StatusBadRequest, "MalformedQueryString", "%v", err))
		return
	}
	action := r.Form.Get("Action")
	h, ok := iamActions[action]
	if !ok {
		awsproto.WriteError(w, r, awsproto.Query, awsproto.Errorf(http.StatusBadRequest, "InvalidAction",
			"Could not find operation %q for version 2010-05-08", action))
		return
	}
	if v := r.Form.Get("Version"); v != "" && v != "2010-05-08" {
		awsproto.WriteError(w, r, awsproto.Query, awsproto.Errorf(http.StatusBadRequest, "InvalidParameterValue",
			"IAM API version %q is not supported; use 2010-05-08", v))
		return
	}
	call := &apiCall{ctx: r.Context(), p: PrincipalFrom(r.Context()), form: r.Form.Get, action: action}
	result, err := h(a, call)
	if err != nil {
		var ae *awsproto.Error
		if !errors.As(err, &ae) {
			a.log.Error("iam action failed", "action", action, "err", err, "request_id", awsproto.RequestID(r.Context()))
			ae = awsproto.Errorf(http.StatusInternalServerError, "ServiceFailure", "internal error; request ID %s", awsproto.RequestID(r.Context()))
		}
		awsproto.WriteError(w, r, awsproto.Query, ae)
		return
	}
	awsproto.WriteQueryResult(w, r, Namespace, action, result)
}

// authorize checks iam:<Action> on resource.
func (a *API) authorize(c *apiCall, resource string) error {
	return a.store.Authorize(c.ctx, c.p, "iam:"+c.action, resource, nil)
}

func (a *API) userARN(ctx context.Context, name string) string {
	if u, err := a.store.GetUser(ctx, name); err == nil {
		return u.ARN
	}
	return a.store.ResourceARN("user", name)
}

func (a *API) roleARN(ctx context.Context, name string) string {
	if r, err := a.store.GetRole(ctx, name); err == nil {
		return r.ARN
	}
	return a.store.ResourceARN("role", name)
}

// targetUser is the UserName parameter or, when absent, the caller (IAM
// lets users manage their own keys without naming themselves).
func (a *API) targetUser(c *apiCall) (string, error) {
	if u := c.form("UserName"); u != "" {
		return u, nil
	}
	if c.p.Kind != KindUser {
		return "", validation("UserName is required when calling with role credentials")
	}
	return c.p.Name, nil
}

// ---- response shapes (botocore's iam service-2.json) ----

type userXML struct {
	Path       string
	UserName   string
	UserId     string
	Arn        string
	CreateDate string
}

func toUserXML(u User) userXML {
	return userXML{Path: u.Path, UserName: u.Name, UserId: u.ID, Arn: u.ARN, CreateDate: awsproto.Timestamp(u.Created)}
}

type roleXML struct {
	Path                     string
	RoleName                 string
	RoleId                   string
	Arn                      string
	CreateDate               string
	AssumeRolePolicyDocument string
	Description              string `xml:",omitempty"`
	MaxSessionDuration       int
}

func toRoleXML(r Role) roleXML {
	return roleXML{Path: r.Path, RoleName: r.Name, RoleId: r.ID, Arn: r.ARN, CreateDate: awsproto.Timestamp(r.Created),
		AssumeRolePolicyDocument: awsproto.PolicyDocument(r.Trust), Description: r.Description, MaxSessionDuration: r.MaxSession}
}

type policyXML struct {
	PolicyName       string
	PolicyId         string
	Arn              string
	Path             string
	DefaultVersionId string
	AttachmentCount  int
	IsAttachable     bool
	Description      string `xml:",omitempty"`
	CreateDate       string
	UpdateDate       string
}

func toPolicyXML(p ManagedPolicy) policyXML {
	return policyXML{PolicyName: p.Name, PolicyId: p.ID, Arn: p.ARN, Path: p.Path, DefaultVersionId: "v1",
		AttachmentCount: p.Attachments, IsAttachable: true, Description: p.Description,
		CreateDate: awsproto.Timestamp(p.Created), UpdateDate: awsproto.Timestamp(p.Updated)}
}

type attachedXML struct {
	PolicyName string
	PolicyArn  string
}

type accessKeyMetaXML struct {
	UserName    string
	AccessKeyId string
	Status      string
	CreateDate  string
}

// ---- users ----

func (a *API) createUser(c *apiCall) (any, error) {
	name := c.form("UserName")
	if err := a.authorize(c, a.store.arn("user", orSlash(c.form("Path")), name)); err != nil {
		return nil, err
	}
	u, err := a.store.CreateUser(c.ctx, name, c.form("Path"))
	if err != nil {
		return nil, err
	}
	return struct{ User userXML }{toUserXML(u)}, nil
}

func orSlash(p string) string {
	if p == "" {
		return "/"
	}
	return p
}

func (a *API) getUser(c *apiCall) (any, error) {
	name, err := a.targetUser(c)
	if err != nil {
		return nil, err
	}
	// As on AWS, a user may always read itself.
	if c.form("UserName") != "" {
		if err := a.authorize(c, a.userARN(c.ctx, name)); err != nil {
			return nil, err
		}
	}
	u, err := a.store.GetUser(c.ctx, name)
	if err != nil {
		return nil, err
	}
	return struct{ User userXML }{toUserXML(u)}, nil
}

func (a *API) listUsers(c *apiCall) (any, error) {
	if err := a.authorize(c, a.store.arn("user", "/", "")); err != nil {
		return nil, err
	}
	users, err := a.store.ListUsers(c.ctx, c.form("PathPrefix"))
	if err != nil {
		return nil, err
	}
	out := make(awsproto.Members[userXML], 0, len(users))
	for _, u := range users {
		out = append(out, toUserXML(u))
	}
	return struct {
		Users       awsproto.Members[userXML]
		IsTruncated bool
	}{out, false}, nil
}

func (a *API) deleteUser(c *apiCall) (any, error) {
	name := c.form("UserName")
	if err := a.authorize(c, a.userARN(c.ctx, name)); err != nil {
		return nil, err
	}
	return nil, a.store.DeleteUser(c.ctx, name)
}

// ---- access keys ----

func (a *API) createAccessKey(c *apiCall) (any, error) {
	user, err := a.targetUser(c)
	if err != nil {
		return nil, err
	}
	if err := a.authorize(c, a.userARN(c.ctx, user)); err != nil {
		return nil, err
	}
	key, created, err := a.store.CreateAccessKey(c.ctx, user)
	if err != nil {
		return nil, err
	}
	type accessKeyXML struct {
		UserName        string
		AccessKeyId     string
		Status          string
		SecretAccessKey string
		CreateDate      string
	}
	return struct{ AccessKey accessKeyXML }{accessKeyXML{key.User, key.ID, "Active", key.Secret, awsproto.Timestamp(created)}}, nil
}

func (a *API) listAccessKeys(c *apiCall) (any, error) {
	user, err := a.targetUser(c)
	if err != nil {
		return nil, err
	}
	if err := a.authorize(c, a.userARN(c.ctx, user)); err != nil {
		return nil, err
	}
	keys, err := a.store.ListAccessKeys(c.ctx, user)
	if err != nil {
		return nil, err
	}
	out := make(awsproto.Members[accessKeyMetaXML], 0, len(keys))
	for _, k := range keys {
		out = append(out, accessKeyMetaXML{k.User, k.ID, k.Status, awsproto.Timestamp(k.Created)})
	}
	return struct {
		AccessKeyMetadata awsproto.Members[accessKeyMetaXML]
		IsTruncated       bool
	}{out, false}, nil
}

func (a *API) updateAccessKey(c *apiCall) (any, error) {
	user, err := a.targetUser(c)
	if err != nil {
		return nil, err
	}
	if err := a.authorize(c, a.userARN(c.ctx, user)); err != nil {
		return nil, err
	}
	return nil, a.store.UpdateAccessKey(c.ctx, user, c.form("AccessKeyId"), c.form("Status"))
}

func (a *API) deleteAccessKey(c *apiCall) (any, error) {
	user, err := a.targetUser(c)
	if err != nil {
		return nil, err
	}
	if err := a.authorize(c, a.userARN(c.ctx, user)); err != nil {
		return nil, err
	}
	return nil, a.store.DeleteAccessKey(c.ctx, user, c.form("AccessKeyId"))
}

// ---- roles ----

func (a *API) createRole(c *apiCall) (any, error) {
	name := c.form("RoleName")
	if err := a.authorize(c, a.store.arn("role", orSlash(c.form("Path")), name)); err != nil {
		return nil, err
	}
	maxSession := 0
	if v := c.form("MaxSessionDuration"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return nil, validation("MaxSessionDuration must be a number of seconds")
		}
		maxSession = n
	}
	r, err := a.store.CreateRole(c.ctx, Role{Name: name, Path: c.form("Path"), Trust: c.form("AssumeRolePolicyDocument"),
		Description: c.form("Description"), MaxSession: maxSession})
	if err != nil {
		return nil, err
	}
	return struct{ Role roleXML }{toRoleXML(r)}, nil
}

func (a *API) getRole(c *apiCall) (any, error) {
	name := c.form("RoleName")
	if err := a.authorize(c, a.roleARN(c.ctx, name)); err != nil {
		return nil, err
	}
	r, err := a.store.GetRole(c.ctx, name)
	if err != nil {
		return nil, err
	}
	return struct{ Role roleXML }{toRoleXML(r)}, nil
}

func (a *API) listRoles(c *apiCall) (any, error) {
	if err := a.authorize(c, a.store.arn("role", "/", "")); err != nil {
		return nil, err
	}
	roles, err := a.store.ListRoles(c.ctx, c.form("PathPrefix"))
	if err != nil {
		return nil, err
	}
	out := make(awsproto.Members[roleXML], 0, len(roles))
	for _, r := range roles {
		out = append(out, toRoleXML(r))
	}
	return struct {
		Roles       awsproto.Members[roleXML]
		IsTruncated bool
	}{out, false}, nil
}

func (a *API) deleteRole(c *apiCall) (any, error) {
	name := c.form("RoleName")
	if err := a.authorize(c, a.roleARN(c.ctx, name)); err != nil {
		return nil, err
	}
	return nil, a.store.DeleteRole(c.ctx, name)
}

func (a *API) updateAssumeRolePolicy(c *apiCall) (any, error) {
	name := c.form("RoleName")
	if err := a.authorize(c, a.roleARN(c.ctx, name)); err != nil {
		return nil, err
	}
	return nil, a.store.UpdateTrust(c.ctx, name, c.form("PolicyDocument"))
}

// ---- inline policies ----

func inline(kind, op string) handlerFunc {
	return func(a *API, c *apiCall) (any, error) {
		ownerParam, resource := "UserName", ""
		if kind == KindRole {
			ownerParam = "RoleName"
		}
		owner := c.form(ownerParam)
		if owner == "" {
			return nil, validation("%s is required", ownerParam)
		}
		if kind == KindUser {
			resource = a.userARN(c.ctx, owner)
		} else {
			resource = a.roleARN(c.ctx, owner)
		}
		if err := a.authorize(c, resource); err != nil {
			return nil, err
		}
		name := c.form("PolicyName")
		switch op {
		case "put":
			return nil, a.store.PutInlinePolicy(c.ctx, kind, owner, name, c.form("PolicyDocument"))
		case "delete":
			return nil, a.store.DeleteInlinePolicy(c.ctx, kind, owner, name)
		case "get":
			doc, err := a.store.GetInlinePolicy(c.ctx, kind, owner, name)
			if err != nil {
				return nil, err
			}
			if kind == KindUser {
				return struct{ UserName, PolicyName, PolicyDocument string }{owner, name, awsproto.PolicyDocument(doc)}, nil
			}
			return struct{ RoleName, PolicyName, PolicyDocument string }{owner, name, awsproto.PolicyDocument(doc)}, nil
		}
		names, err := a.store.ListInlinePolicies(c.ctx, kind, owner)
		if err != nil {
			return nil, err
		}
		return struct {
			PolicyNames awsproto.Members[string]
			IsTruncated bool
		}{awsproto.Members[string](append([]string{}, names...)), false}, nil
	}
}

// ---- managed policies ----

func (a *API) createPolicy(c *apiCall) (any, error) {
	name := c.form("PolicyName")
	if err := a.authorize(c, a.store.arn("policy", orSlash(c.form("Path")), name)); err != nil {
		return nil, err
	}
	p, err := a.store.CreatePolicy(c.ctx, name, c.form("Path"), c.form("PolicyDocument"), c.form("Description"))
	if err != nil {
		return nil, err
	}
	return struct{ Policy policyXML }{toPolicyXML(p)}, nil
}

func (a *API) getPolicy(c *apiCall) (any, error) {
	arn := c.form("PolicyArn")
	if err := a.authorize(c, arn); err != nil {
		return nil, err
	}
	p, err := a.store.GetPolicy(c.ctx, arn)
	if err != nil {
		return nil, err
	}
	return struct{ Policy policyXML }{toPolicyXML(p)}, nil
}

func (a *API) getPolicyVersion(c *apiCall) (any, error) {
	arn := c.form("PolicyArn")
	if err := a.authorize(c, arn); err != nil {
		return nil, err
	}
	p, err := a.store.GetPolicy(c.ctx, arn)
	if err != nil {
		return nil, err
	}
	if v := c.form("VersionId"); v != "v1" {
		return nil, noSuchEntity("Policy %s version %s does not exist.", arn, v)
	}
	type versionXML struct {
		Document         string
		VersionId        string
		IsDefaultVersion bool
		CreateDate       string
	}
	return struct{ PolicyVersion versionXML }{versionXML{awsproto.PolicyDocument(p.Document), "v1", true, awsproto.Timestamp(p.Created)}}, nil
}

func (a *API) listPolicies(c *apiCall) (any, error) {
	if err := a.authorize(c, a.store.arn("policy", "/", "")); err != nil {
		return nil, err
	}
	ps, err := a.store.ListPolicies(c.ctx, c.form("Scope"), c.form("OnlyAttached") == "true")
	if err != nil {
		return nil, err
	}
	out := make(awsproto.Members[policyXML], 0, len(ps))
	for _, p := range ps {
		out = append(out, toPolicyXML(p))
	}
	return struct {
		Policies    awsproto.Members[policyXML]
		IsTruncated bool
	}{out, false}, nil
}

func (a *API) deletePolicy(c *apiCall) (any, error) {
	arn := c.form("PolicyArn")
	if err := a.authorize(c, arn); err != nil {
		return nil, err
	}
	return nil, a.store.DeletePolicy(c.ctx, arn)
}

func attachment(kind, op string) handlerFunc {
	return func(a *API, c *apiCall) (any, error) {
		ownerParam, resource := "UserName", ""
		if kind == KindRole {
			ownerParam = "RoleName"
		}
		owner := c.form(ownerParam)
		if kind == KindUser {
			resource = a.userARN(c.ctx, owner)
		} else {
			resource = a.roleARN(c.ctx, owner)
		}
		if err := a.authorize(c, resource); err != nil {
			return nil, err
		}
		switch op {
		case "attach":
			return nil, a.store.Attach(c.ctx, kind, owner, c.form("PolicyArn"))
		case "detach":
			return nil, a.store.Detach(c.ctx, kind, owner, c.form("PolicyArn"))
		}
		ps, err := a.store.ListAttached(c.ctx, kind, owner)
		if err != nil {
			return nil, err
		}
		out := make(awsproto.Members[attachedXML], 0, len(ps))
		for _, p := range ps {
			out = append(out, attachedXML{p.Name, p.ARN})
		}
		return struct {
			AttachedPolicies awsproto.Members[attachedXML]
			IsTruncated      bool
		}{out, false}, nil
	}
}

func (a *API) getAccountAuthorizationDetails(c *apiCall) (any, error) {
	if err := a.authorize(c, "*"); err != nil {
		return nil, err
	}
	type policyDetail struct{ PolicyName, PolicyDocument string }
	type userDetail struct {
		Path, UserName, UserId, Arn, CreateDate string
		UserPolicyList                          awsproto.Members[policyDetail]
		AttachedManagedPolicies                 awsproto.Members[attachedXML]
	}
	type roleDetail struct {
		Path, RoleName, RoleId, Arn, CreateDate, AssumeRolePolicyDocument string
		RolePolicyList                                                    awsproto.Members[policyDetail]
		AttachedManagedPolicies                                           awsproto.Members[attachedXML]
	}
	details := func(kind, owner string) (awsproto.Members[policyDetail], awsproto.Members[attachedXML], error) {
		names, err := a.store.ListInlinePolicies(c.ctx, kind, owner)
		if err != nil {
			return nil, nil, err
		}
		pl := awsproto.Members[policyDetail]{}
		for _, n := range names {
			doc, _ := a.store.GetInlinePolicy(c.ctx, kind, owner, n)
			pl = append(pl, policyDetail{n, awsproto.PolicyDocument(doc)})
		}
		att, err := a.store.ListAttached(c.ctx, kind, owner)
		if err != nil {
			return nil, nil, err
		}
		al := awsproto.Members[attachedXML]{}
		for _, p := range att {
			al = append(al, attachedXML{p.Name, p.ARN})
		}
		return pl, al, nil
	}
	users, err := a.store.ListUsers(c.ctx, "/")
	if err != nil {
		return nil, err
	}
	ud := awsproto.Members[userDetail]{}
	for _, u := range users {
		pl, al, err := details(KindUser, u.Name)
		if err != nil {
			return nil, err
		}
		ud = append(ud, userDetail{u.Path, u.Name, u.ID, u.ARN, awsproto.Timestamp(u.Created), pl, al})
	}
	roles, err := a.store.ListRoles(c.ctx, "/")
	if err != nil {
		return nil, err
	}
	rd := awsproto.Members[roleDetail]{}
	for _, r := range roles {
		pl, al, err := details(KindRole, r.Name)
		if err != nil {
			return nil, err
		}
		rd = append(rd, roleDetail{r.Path, r.Name, r.ID, r.ARN, awsproto.Timestamp(r.Created), awsproto.PolicyDocument(r.Trust), pl, al})
	}
	return struct {
		UserDetailList awsproto.Members[userDetail]
		RoleDetailList awsproto.Members[roleDetail]
		IsTruncated    bool
	}{ud, rd, false}, nil
}
