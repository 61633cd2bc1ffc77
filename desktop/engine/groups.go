package engine

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/desktop/engine/store"
)

// Group is a group's name and member count.
type Group struct {
	Name    string
	Members int
}

func (e *Engine) groupCall(ctx context.Context, call func(context.Context) (*api.GroupResponse, error)) (string, error) {
	s, err := e.current()
	if err != nil {
		return "", err
	}
	cctx, cancel := e.callCtx(ctx, s)
	defer cancel()
	resp, err := call(cctx)
	if err != nil {
		return "", e.friendly(err)
	}
	return resp.Name, nil
}

// CreateGroup makes a group with you in it.
func (e *Engine) CreateGroup(ctx context.Context, name string) (string, error) {
	return e.groupCall(ctx, func(c context.Context) (*api.GroupResponse, error) {
		return e.coord.CreateGroup(c, &api.GroupRequest{Name: name})
	})
}

// JoinGroup joins an existing group.
func (e *Engine) JoinGroup(ctx context.Context, name string) (string, error) {
	return e.groupCall(ctx, func(c context.Context) (*api.GroupResponse, error) {
		return e.coord.JoinGroup(c, &api.GroupRequest{Name: name})
	})
}

// LeaveGroup leaves a group.
func (e *Engine) LeaveGroup(ctx context.Context, name string) (string, error) {
	return e.groupCall(ctx, func(c context.Context) (*api.GroupResponse, error) {
		return e.coord.LeaveGroup(c, &api.GroupRequest{Name: name})
	})
}

func (e *Engine) listGroups(ctx context.Context, mine bool) ([]Group, error) {
	s, err := e.current()
	if err != nil {
		return nil, err
	}
	var out []Group
	req := &api.ListGroupsRequest{}
	for page := 0; page < maxGroupPages; page++ {
		cctx, cancel := e.callCtx(ctx, s)
		var resp *api.ListGroupsResponse
		if mine {
			resp, err = e.coord.MyGroups(cctx, req)
		} else {
			resp, err = e.coord.ListGroups(cctx, req)
		}
		cancel()
		if err != nil {
			return nil, e.friendly(err)
		}
		for _, g := range resp.Groups {
			out = append(out, Group{Name: g.Name, Members: int(g.Members)})
		}
		if resp.NextPageToken == "" {
			break
		}
		req.PageToken = resp.NextPageToken
	}
	return out, nil
}

// maxGroupPages bounds a listing the client gathers (the cluster answers
// at most 500 groups a page).
const maxGroupPages = 100

// ListGroups lists every group with its member count.
func (e *Engine) ListGroups(ctx context.Context) ([]Group, error) { return e.listGroups(ctx, false) }

// MyGroups lists the groups you are in.
func (e *Engine) MyGroups(ctx context.Context) ([]Group, error) { return e.listGroups(ctx, true) }

// Members lists a group's members.
func (e *Engine) Members(ctx context.Context, name string) (string, []string, error) {
	s, err := e.current()
	if err != nil {
		return "", nil, err
	}
	cctx, cancel := e.callCtx(ctx, s)
	defer cancel()
	resp, err := e.coord.Members(cctx, &api.GroupRequest{Name: name})
	if err != nil {
		return "", nil, e.friendly(err)
	}
	return resp.Name, resp.LoginIds, nil
}

// SendGroup sends text to every member of every named group exactly once,
// pairwise end to end. You must be in each group. The message is labelled
// with the first named group the member is in.
func (e *Engine) SendGroup(ctx context.Context, groups []string, text string) (int, error) {
	s, err := e.current()
	if err != nil {
		return 0, err
	}
	order, label, _, err := e.groupRecipients(ctx, s, groups)
	if err != nil {
		return 0, err
	}
	// One queue entry per member; members sharing a label share a
	// history line.
	byLabel := map[string][]string{}
	for _, m := range order {
		byLabel[label[m]] = append(byLabel[label[m]], m)
	}
	labels := make([]string, 0, len(byLabel))
	for l := range byLabel {
		labels = append(labels, l)
	}
	sort.Strings(labels)
	for _, l := range labels {
		if _, err := e.queueText(s, byLabel[l], l, text); err != nil {
			return 0, err
		}
	}
	return len(order), nil
}

// groupRecipients is everyone else in the named groups, once each, in the
// order met, labelled with the first named group they are in; names are
// the groups as the cluster spells them. You must be in each group.
func (e *Engine) groupRecipients(ctx context.Context, s *online, groups []string) (order []string, label map[string]string, names []string, err error) {
	label = map[string]string{}
	for _, g := range groups {
		name, members, err := e.Members(ctx, g)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("group %s: %w", g, err)
		}
		names = append(names, name)
		if !slices.Contains(members, s.login) {
			return nil, nil, nil, fmt.Errorf("you are not in group %s; Join %s first", name, name)
		}
		for _, m := range members {
			if m == s.login {
				continue
			}
			if _, ok := label[m]; !ok {
				label[m] = name
				order = append(order, m)
			}
		}
	}
	if len(order) == 0 {
		return nil, nil, nil, fmt.Errorf("nobody else is in %s yet", strings.Join(groups, ", "))
	}
	return order, label, names, nil
}

// History returns the last n messages with a contact or in a group.
func (e *Engine) History(ctx context.Context, name string, n int) ([]Message, error) {
	ms, err := e.history(ctx, name, n)
	return messagesOf(ms), err
}

func (e *Engine) history(ctx context.Context, name string, n int) ([]*store.Message, error) {
	s, err := e.current()
	if err != nil {
		return nil, err
	}
	e.flushStates(s)
	// A group you are in, or else a person.
	if gname, members, err := e.Members(ctx, name); err == nil {
		for _, m := range members {
			if m == s.login {
				return e.store.History("#"+strings.ToLower(gname), n)
			}
		}
	}
	login, err := e.Resolve(ctx, name)
	if err != nil {
		return nil, err
	}
	return e.store.History("@"+login, n)
}

// Search finds messages containing text, newest last.
func (e *Engine) Search(text string, limit int) ([]Message, error) {
	if s, err := e.current(); err == nil {
		e.flushStates(s)
	}
	st := e.profile()
	if st == nil {
		return nil, ErrNotLoggedIn
	}
	ms, err := st.Search(text, limit)
	return messagesOf(ms), err
}
