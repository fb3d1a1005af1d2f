#!/usr/bin/env bash
# Runs the supply-chain check, `cargo deny --frozen check`, with deny.toml (scripts/test.sh runs it;
# arguments are passed on, e.g. `scripts/deny.sh advisories`). Needs cargo-deny 0.20.2
# (`cargo install cargo-deny --version 0.20.2 --locked`).
#
# The advisories come from deny/advisory-db (scripts/advisories.md), not from the network. cargo-deny
# expects a database to be a git repository at `<db-path>/<last url segment>-<hash of the url>`;
# this script makes that repository under target/ from deny/advisory-db, dated by the last commit
# that changed deny/advisory-db, so that cargo-deny's staleness check (`maximum-db-staleness`)
# measures how old our copy is.
#
# Do not run `cargo deny check` without --offline/--frozen: cargo-deny would then try to fetch the
# database, which it does with `git reset --hard` and `git fetch` inside the database directory.
set -euo pipefail
cd "$(dirname "$0")/.."

# The directory cargo-deny 0.20.2 derives from deny.toml's db-urls
# ("https://advisories.m2m.invalid/advisory-db").
db_root=target/advisory-db
db="$db_root/advisory-db-3241005de920628a"

updated=$(git log -1 --format=%cI -- deny/advisory-db)
if [ -z "$updated" ]; then
  echo "deny.sh: deny/advisory-db has no git history here; the check needs a git clone" >&2
  exit 1
fi

rm -rf "$db"
mkdir -p "$db"
cp -R deny/advisory-db/. "$db/"
(
  cd "$db"
  git init -q
  git add -A
  GIT_AUTHOR_DATE="$updated" GIT_COMMITTER_DATE="$updated" \
    git -c user.name=m2m -c user.email=m2m@localhost -c commit.gpgsign=false \
    commit -q --no-verify -m "deny/advisory-db as of $updated"
  # cargo-deny takes the later of HEAD's commit time and the HEAD file's modification time.
  touch -d "$updated" .git/HEAD
)

# The dependencies' manifests (a fresh machine has none yet) and cargo's copy of their index
# entries, which the yanked check reads.
cargo fetch --locked --quiet
cargo deny --frozen check "$@"
