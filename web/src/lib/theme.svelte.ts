/** Light or dark: the user's choice (kept in localStorage), else the system's, as `data-theme` on <html>. */
export type ThemeChoice = 'light' | 'dark' | 'system';
const KEY = 'wrenn.theme';

class ThemeState {
	choice = $state<ThemeChoice>('system');
	dark = $state(false);
	#media: MediaQueryList | null = null;

	init(): void {
		const stored = localStorage.getItem(KEY);
		this.choice = stored === 'light' || stored === 'dark' ? stored : 'system';
		this.#media = matchMedia('(prefers-color-scheme: dark)');
		this.#media.addEventListener('change', () => this.#apply());
		this.#apply();
	}

	set(choice: ThemeChoice): void {
		this.choice = choice;
		if (choice === 'system') localStorage.removeItem(KEY);
		else localStorage.setItem(KEY, choice);
		this.#apply();
	}

	cycle(): void {
		this.set(this.choice === 'system' ? (this.dark ? 'light' : 'dark') : this.choice === 'dark' ? 'light' : 'dark');
	}

	#apply(): void {
		this.dark = this.choice === 'dark' || (this.choice === 'system' && !!this.#media?.matches);
		document.documentElement.dataset.theme = this.dark ? 'dark' : 'light';
	}
}

export const theme = new ThemeState();
