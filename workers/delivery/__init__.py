"""Local delivery for qmgr: recipient resolution, mailbox/pipe/file delivery, bounces."""
