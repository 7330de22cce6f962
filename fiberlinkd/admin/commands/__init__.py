"""Admin command modules. Each registers its handlers with ``@admin_command`` at import and
may define ``add_cli(admin_subparsers)`` for its ``fiberlinkd admin …`` parsers.

To add a command group, append your module's name here (one line, nothing else).
"""

MODULES: tuple[str, ...] = (
    "fiberlinkd.admin.commands.status",
    "fiberlinkd.admin.commands.apps",
    "fiberlinkd.admin.commands.grants",
    "fiberlinkd.admin.commands.audit",
    "fiberlinkd.admin.commands.backup",
    "fiberlinkd.admin.commands.freeze",
    "fiberlinkd.withdrawals.admin_commands",
    "fiberlinkd.reconciler.admin_commands",
    "fiberlinkd.settlement_admin",
)
