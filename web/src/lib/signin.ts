/** What the sign-in and settings pages say for the `?error=` codes an identity provider's callback sends
 * the browser back with (`/v1/auth/oauth/{provider}/callback`). */
export const ERRORS: Record<string, string> = {
	invalid_state: 'That sign-in expired or was started in another browser. Please try again.',
	access_denied: 'The sign-in was cancelled at the provider.',
	missing_code: 'The provider sent no answer. Please try again.',
	exchange_failed: 'The provider’s answer could not be verified. Please try again, or tell your operator.',
	provider_unreachable: 'The identity provider did not answer. Please try again later.',
	email_unverified: 'The provider did not confirm your e-mail address, so no account was made.',
	email_taken:
		'An account already has this e-mail address. Sign in with its password, then link the provider in Settings.',
	identity_taken: 'That provider account is linked to another Wrenn account.',
	already_linked: 'Another account of this provider is linked already: unlink it first.',
	account_disabled: 'This account is disabled.'
};
