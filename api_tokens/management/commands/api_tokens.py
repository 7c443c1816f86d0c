from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from api_tokens import selectors, services


class Command(BaseCommand):
    help = "Create, list and revoke a user's API tokens; prune expired ones."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser(
            "create", help="Issue a token. Prints the token alone on stdout (shown once), the rest on stderr."
        )
        create.add_argument("username")
        create.add_argument("--name", default="", help="What the token is for.")
        create.add_argument("--days", type=float, help="Lifetime in days (default: API_TOKEN_TTL_DAYS).")
        listing = actions.add_parser("list", help="The user's tokens: id, name, created, expiry (never the token).")
        listing.add_argument("username")
        revoke = actions.add_parser("revoke", help="Revoke tokens of a user.")
        revoke.add_argument("username")
        which = revoke.add_mutually_exclusive_group(required=True)
        which.add_argument("--id", type=int, action="append", dest="ids", help="This token (repeatable).")
        which.add_argument("--name", help="Every token with this name.")
        which.add_argument("--all", action="store_true", help="Every token of the user.")
        actions.add_parser("prune", help="Delete every expired token.")

    def handle(self, *args, action, **options):
        if action == "prune":
            self.stdout.write(f"deleted {services.api_tokens_prune_expired()} expired token(s)")
            return
        user = self._user(options["username"])
        if action == "create":
            self._create(user, name=options["name"], days=options["days"])
        elif action == "list":
            self._list(user)
        elif options["ids"]:
            for token_id in options["ids"]:
                try:
                    services.api_token_revoke(user=user, token_id=token_id)
                except services.ApiTokenNotFound:
                    raise CommandError(f"{user.get_username()} has no token {token_id}") from None
                self.stdout.write(f"revoked token {token_id}")
        else:
            revoked = services.api_token_revoke_all(user=user, name=None if options["all"] else options["name"])
            self.stdout.write(f"revoked {revoked} token(s)")

    def _user(self, username: str):
        try:
            return get_user_model().objects.get_by_natural_key(username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"no user {username!r}") from None

    def _create(self, user, *, name: str, days: float | None) -> None:
        if days is not None and days <= 0:
            raise CommandError("--days must be more than 0")
        try:
            issued = services.api_token_issue(
                user=user, name=name, lifetime=None if days is None else timedelta(days=days)
            )
        except services.TooManyApiTokens as exc:
            raise CommandError(exc.detail) from None
        self.stderr.write(
            f"token {issued.api_token.pk} for {user.get_username()}, expires {issued.api_token.expiry:%Y-%m-%d %H:%M} "
            "UTC; shown this once:"
        )
        self.stdout.write(issued.token)

    def _list(self, user) -> None:
        now = timezone.now()
        for api_token in selectors.api_token_list(user=user):
            state = "expired" if api_token.expiry <= now else "expires"
            self.stdout.write(
                f"{api_token.pk}\t{api_token.name or '-'}\tcreated {api_token.created:%Y-%m-%d %H:%M}"
                f"\t{state} {api_token.expiry:%Y-%m-%d %H:%M}"
            )
