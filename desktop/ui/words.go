package ui

import "github.com/e2em/e2em/desktop/engine"

// words is an engine error as the window says it: the engine's plain
// words, and what to do about it here.
func words(err error) string {
	hint := map[engine.ErrorKind]string{
		engine.KindUnreachable:     "check your network; e2em keeps trying",
		engine.KindTimeout:         "try again",
		engine.KindUnauthenticated: "check the login id and password",
		engine.KindProfileInUse:    "close the other e2em window first",
		engine.KindKeyChanged:      "compare safety numbers before you trust the new key",
	}[engine.KindOf(err)]
	if hint == "" {
		return err.Error()
	}
	return err.Error() + ": " + hint
}
